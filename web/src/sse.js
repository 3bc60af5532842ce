// Server-Sent Events parsing for streams read with fetch (EventSource cannot POST).
// Follows the WHATWG rules: events end at a blank line; `event:` names it,
// `data:` lines are joined with "\n"; lines starting with ":" are comments.

export function createSseParser(onEvent) {
  let buffer = ''
  let event = ''
  let data = []

  function dispatch() {
    if (data.length) onEvent({ event: event || 'message', data: data.join('\n') })
    event = ''
    data = []
  }

  function line(text) {
    if (text === '') return dispatch()
    if (text.startsWith(':')) return
    const colon = text.indexOf(':')
    const field = colon === -1 ? text : text.slice(0, colon)
    let value = colon === -1 ? '' : text.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'event') event = value
    else if (field === 'data') data.push(value)
  }

  return {
    /** Feed the next piece of decoded text; complete lines are handled at once. */
    feed(chunk) {
      buffer += chunk
      let start = 0
      for (;;) {
        const nl = buffer.slice(start).search(/\r\n|\r|\n/)
        if (nl === -1) break
        const end = start + nl
        // A lone "\r" at the very end may be the first half of "\r\n": wait for more.
        if (buffer[end] === '\r' && end === buffer.length - 1) break
        line(buffer.slice(start, end))
        start = end + (buffer[end] === '\r' && buffer[end + 1] === '\n' ? 2 : 1)
      }
      buffer = buffer.slice(start)
    },
    /** The stream ended: a final event without its blank line still counts. */
    end() {
      if (buffer) line(buffer)
      buffer = ''
      dispatch()
    },
  }
}

/** JSON data of one event, or null when it is not JSON. */
export function eventJson(ev) {
  try {
    return JSON.parse(ev.data)
  } catch {
    return null
  }
}

/** Read a fetch Response body as SSE, calling onEvent({event, data}) for each event. */
export async function readSse(response, onEvent) {
  const parser = createSseParser(onEvent)
  const reader = response.body.getReader()
  const decoder = new TextDecoder()
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    parser.feed(decoder.decode(value, { stream: true }))
  }
  parser.feed(decoder.decode())
  parser.end()
}
