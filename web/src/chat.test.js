import { afterEach, describe, expect, it, vi } from 'vitest'
import { applyChatEvent, newAssistantMessage, normaliseProvenance, streamChat } from './chat.js'

const block = { id: 'ab'.repeat(32), body: 'The boiler is serviced in May.', kind: 'fact', author: 'dev' }

describe('applyChatEvent', () => {
  it('builds an answer from sources, deltas, learned and answer events', () => {
    const m = newAssistantMessage()
    applyChatEvent(m, 'sources', { items: [{ n: 1, id: block.id }] })
    applyChatEvent(m, 'delta', { text: 'In ' })
    applyChatEvent(m, 'delta', { text: 'May [1].' })
    expect(m.text).toBe('In May [1].')
    expect(m.streaming).toBe(true)
    applyChatEvent(m, 'learned', { created: true, block })
    applyChatEvent(m, 'answer', {
      text: 'In May [1].',
      conversation_id: 'c-abc',
      cancelled: false,
      citations: [{ n: 1, block, provenance: { valid: true, author_name: 'laptop' } }],
    })
    expect(m).toMatchObject({ streaming: false, conversationId: 'c-abc', sources: [{ n: 1 }] })
    expect(m.citations).toHaveLength(1)
    expect(m.learned).toHaveLength(1)
  })

  it('records an error event and stops streaming; ignores junk', () => {
    const m = newAssistantMessage()
    applyChatEvent(m, 'delta', null)
    applyChatEvent(m, 'unknown', { x: 1 })
    applyChatEvent(m, 'error', { code: 'backend_timeout', message: 'too slow' })
    expect(m.error).toEqual({ code: 'backend_timeout', message: 'too slow' })
    expect(m.streaming).toBe(false)
  })
})

describe('normaliseProvenance', () => {
  it('reads both the citation and the GET /blocks/{id} shapes', () => {
    expect(normaliseProvenance({ author: 'd', author_name: 'phone', role: 'member', created: 1, valid: true, error: '' }))
      .toMatchObject({ authorName: 'phone', role: 'member', valid: true })
    expect(normaliseProvenance({ author: 'd', author_name: 'pc', author_role: 'authority', created: 1, valid: false, error: 'bad_sig' }))
      .toMatchObject({ role: 'authority', valid: false, error: 'bad_sig' })
    expect(normaliseProvenance(null)).toBeNull()
  })
})

describe('streamChat', () => {
  afterEach(() => vi.unstubAllGlobals())

  it('posts the message with the CSRF header and applies the streamed events', async () => {
    document.cookie = 'kiana_csrf=tok123'
    const body = 'event: delta\ndata: {"text":"Hel"}\n\nevent: delta\ndata: {"text":"lo"}\n\n' +
      'event: answer\ndata: {"text":"Hello","conversation_id":"c-1","cancelled":false,"citations":[]}\n\n'
    const fetch = vi.fn(async () => new Response(body, { headers: { 'content-type': 'text/event-stream' } }))
    vi.stubGlobal('fetch', fetch)
    const m = newAssistantMessage()
    const seen = []
    await streamChat({ message: 'hi' }, m, { onChange: (x) => seen.push(x.text) })
    const [url, init] = fetch.mock.calls[0]
    expect(url).toBe('/api/v1/chat')
    expect(init.headers['X-CSRF-Token']).toBe('tok123')
    expect(init.credentials).toBe('same-origin')
    expect(JSON.parse(init.body)).toEqual({ message: 'hi', stream: true })
    expect(seen).toEqual(['Hel', 'Hello', 'Hello'])
    expect(m).toMatchObject({ text: 'Hello', conversationId: 'c-1', streaming: false })
  })

  it('throws the API error when the chat fails before streaming', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => new Response(
      JSON.stringify({ error: { code: 'model_unavailable', message: 'no model' } }),
      { status: 503, headers: { 'content-type': 'application/json' } },
    )))
    await expect(streamChat({ message: 'hi' }, newAssistantMessage())).rejects.toMatchObject({
      status: 503, code: 'model_unavailable', message: 'no model',
    })
  })
})
