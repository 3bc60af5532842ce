import { describe, expect, it } from 'vitest'
import { createSseParser, eventJson, readSse } from './sse.js'

function collect(chunks) {
  const events = []
  const p = createSseParser((e) => events.push(e))
  for (const c of chunks) p.feed(c)
  p.end()
  return events
}

describe('SSE parser', () => {
  it('parses named events with JSON data', () => {
    const ev = collect(['event: delta\ndata: {"text":"Hi"}\n\nevent: answer\ndata: {"text":"Hi!"}\n\n'])
    expect(ev).toEqual([
      { event: 'delta', data: '{"text":"Hi"}' },
      { event: 'answer', data: '{"text":"Hi!"}' },
    ])
    expect(eventJson(ev[1])).toEqual({ text: 'Hi!' })
  })

  it('handles events split at any byte boundary', () => {
    const text = 'event: sources\ndata: {"items":[]}\n\nevent: delta\ndata: {"text":"a b"}\n\n'
    for (let i = 1; i < text.length; i++) {
      expect(collect([text.slice(0, i), text.slice(i)])).toHaveLength(2)
    }
    expect(collect(text.split(''))).toHaveLength(2)
  })

  it('accepts CRLF and CR line endings, also split between \\r and \\n', () => {
    expect(collect(['event: a\r\ndata: 1\r\n\r\n', 'event: b\rdata: 2\r\r'])).toEqual([
      { event: 'a', data: '1' },
      { event: 'b', data: '2' },
    ])
    expect(collect(['event: a\r', '\ndata: 1\r', '\n\r', '\n'])).toEqual([{ event: 'a', data: '1' }])
  })

  it('ignores comments, joins multi-line data, defaults the name to message', () => {
    expect(collect([': keep-alive\n\ndata: one\ndata: two\n\n'])).toEqual([{ event: 'message', data: 'one\ntwo' }])
  })

  it('keeps a value without the optional space, and a final event without its blank line', () => {
    expect(collect(['event:error\ndata:{"code":"x"}'])).toEqual([{ event: 'error', data: '{"code":"x"}' }])
  })

  it('eventJson returns null for non-JSON data', () => {
    expect(eventJson({ data: 'not json' })).toBeNull()
  })

  it('reads a fetch Response body, decoding UTF-8 split across chunks', async () => {
    const bytes = new TextEncoder().encode('event: delta\ndata: {"text":"Grüße ✓"}\n\n')
    const stream = new ReadableStream({
      start(c) {
        for (let i = 0; i < bytes.length; i += 3) c.enqueue(bytes.slice(i, i + 3))
        c.close()
      },
    })
    const events = []
    await readSse(new Response(stream), (e) => events.push(eventJson(e)))
    expect(events).toEqual([{ text: 'Grüße ✓' }])
  })
})
