import { afterEach, describe, expect, it, vi } from 'vitest'
import { blocksKey, lastData, live, startLive, stopLive, subscribe } from './events.js'

class FakeEventSource {
  static last = null
  constructor(url, opts) {
    this.url = url
    this.opts = opts
    this.readyState = 0
    this.handlers = {}
    FakeEventSource.last = this
  }
  addEventListener(name, fn) {
    this.handlers[name] = fn
  }
  emit(name, data) {
    this.handlers[name]({ data: typeof data === 'string' ? data : JSON.stringify(data) })
  }
  close() {
    this.readyState = 2
  }
}

afterEach(() => {
  stopLive()
  vi.unstubAllGlobals()
})

describe('live events', () => {
  it('dispatches named JSON events to subscribers and remembers the last data', () => {
    vi.stubGlobal('EventSource', FakeEventSource)
    startLive()
    const es = FakeEventSource.last
    expect(es.url).toBe('/api/v1/events')
    es.onopen()
    expect(live.value).toBe(true)
    const got = []
    const off = subscribe('blocks', (d) => got.push(d))
    es.emit('blocks', { total: 2, latest: ['a', 'b'] })
    es.emit('blocks', 'not json')
    off()
    es.emit('blocks', { total: 3, latest: ['c'] })
    expect(got).toEqual([{ total: 2, latest: ['a', 'b'] }])
    expect(lastData.blocks).toEqual({ total: 3, latest: ['c'] })
    stopLive()
    expect(live.value).toBe(false)
    expect(lastData.blocks).toBeUndefined()
  })

  it('retries later when the server refused the stream', () => {
    vi.useFakeTimers()
    vi.stubGlobal('EventSource', FakeEventSource)
    startLive()
    const first = FakeEventSource.last
    first.readyState = 2
    first.onerror()
    vi.advanceTimersByTime(2100)
    expect(FakeEventSource.last).not.toBe(first)
    vi.useRealTimers()
  })

  it('keys block snapshots by total and latest ids', () => {
    expect(blocksKey({ total: 2, latest: ['a', 'b'] })).toBe('2:a,b')
    expect(blocksKey(null)).toBeNull()
  })
})
