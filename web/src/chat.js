// The chat stream: POST /api/v1/chat answers Server-Sent Events, applied to one
// assistant message by `applyChatEvent` (pure, so it is unit-tested).
import { request } from './api.js'
import { eventJson, readSse } from './sse.js'

export function newAssistantMessage() {
  return {
    role: 'assistant',
    text: '',
    streaming: true,
    sources: [],
    citations: [],
    learned: [],
    error: null,
    cancelled: false,
    conversationId: null,
  }
}

/** Apply one stream event to the assistant message (mutates and returns it). */
export function applyChatEvent(msg, event, data) {
  if (!data || typeof data !== 'object') return msg
  switch (event) {
    case 'sources':
      msg.sources = Array.isArray(data.items) ? data.items : []
      break
    case 'delta':
      msg.text += typeof data.text === 'string' ? data.text : ''
      break
    case 'learned':
      msg.learned.push(data)
      break
    case 'answer':
      if (typeof data.text === 'string') msg.text = data.text
      msg.citations = Array.isArray(data.citations) ? data.citations : []
      msg.conversationId = data.conversation_id || msg.conversationId
      msg.cancelled = !!data.cancelled
      msg.streaming = false
      break
    case 'error':
      msg.error = { code: data.code || 'error', message: data.message || 'error' }
      msg.streaming = false
      break
  }
  return msg
}

/**
 * Ask. `onChange` runs after every event (to scroll / re-render). Resolves when the
 * stream ends; throws ApiError for failures before the stream started.
 */
export async function streamChat(body, msg, { signal, onChange = () => {} } = {}) {
  const res = await request('POST', '/api/v1/chat', { ...body, stream: true }, {
    raw: true,
    signal,
    headers: { Accept: 'text/event-stream' },
  })
  const type = res.headers.get('content-type') || ''
  if (!type.includes('text/event-stream')) {
    // A JSON answer (stream: false semantics): same fields as the answer event.
    const data = await res.json()
    if (data.sources) applyChatEvent(msg, 'sources', { items: data.sources })
    for (const l of data.learned || []) applyChatEvent(msg, 'learned', l)
    applyChatEvent(msg, 'answer', data)
    onChange(msg)
    return msg
  }
  await readSse(res, (ev) => {
    applyChatEvent(msg, ev.event, eventJson(ev))
    onChange(msg)
  })
  msg.streaming = false
  return msg
}

/** Normalise both provenance shapes (citation vs GET /blocks/{id}) for the block dialog. */
export function normaliseProvenance(p) {
  if (!p) return null
  return {
    author: p.author,
    authorName: p.author_name || '',
    role: p.role || p.author_role || '',
    created: p.created,
    valid: !!p.valid,
    error: p.error || '',
  }
}
