import { afterEach, describe, expect, it, vi } from 'vitest'
import { api, ApiError, connection, csrfHeaders, errorFromBody, readCookie, setUnauthorizedHandler } from './api.js'

const json = (status, body) =>
  new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } })

afterEach(() => {
  vi.unstubAllGlobals()
  setUnauthorizedHandler(() => {})
  connection.offline = false
})

describe('error mapping', () => {
  it('uses the {"error": {code, message}} shape', () => {
    const e = errorFromBody(404, { error: { code: 'not_found', message: 'no such block' } })
    expect(e).toBeInstanceOf(ApiError)
    expect(e).toMatchObject({ status: 404, code: 'not_found', message: 'no such block' })
  })
  it('falls back for FastAPI detail, plain text and empty bodies', () => {
    expect(errorFromBody(422, { detail: 'bad' })).toMatchObject({ code: 'http_422', message: 'bad' })
    expect(errorFromBody(502, 'Bad Gateway')).toMatchObject({ code: 'http_502', message: 'Bad Gateway' })
    expect(errorFromBody(500, null)).toMatchObject({ code: 'http_500', message: 'HTTP 500' })
  })
})

describe('request', () => {
  it('returns JSON and sends no CSRF header on GET', async () => {
    const fetch = vi.fn(async () => json(200, { ok: 1 }))
    vi.stubGlobal('fetch', fetch)
    expect(await api.get('/api/v1/status')).toEqual({ ok: 1 })
    expect(fetch.mock.calls[0][1].headers['X-CSRF-Token']).toBeUndefined()
    expect(fetch.mock.calls[0][1].credentials).toBe('same-origin')
  })

  it('sends the CSRF cookie value on every non-GET', async () => {
    document.cookie = 'kiana_csrf=abc%3D1'
    const fetch = vi.fn(async () => json(201, { block: {} }))
    vi.stubGlobal('fetch', fetch)
    await api.post('/api/v1/blocks', { text: 'x' })
    await api.del('/api/v1/blocks/abcdef')
    for (const call of fetch.mock.calls) expect(call[1].headers['X-CSRF-Token']).toBe('abc=1')
  })

  it('maps a network failure to code "network" and raises the offline banner', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => { throw new TypeError('Failed to fetch') }))
    await expect(api.get('/api/v1/status')).rejects.toMatchObject({ status: 0, code: 'network' })
    expect(connection.offline).toBe(true)
    vi.stubGlobal('fetch', vi.fn(async () => json(200, {})))
    await api.get('/api/v1/status')
    expect(connection.offline).toBe(false)
  })

  it('calls the 401 handler, except for the login call itself', async () => {
    const handler = vi.fn()
    setUnauthorizedHandler(handler)
    vi.stubGlobal('fetch', vi.fn(async () => json(401, { error: { code: 'unauthorized', message: 'log in' } })))
    await expect(api.get('/api/v1/blocks')).rejects.toMatchObject({ status: 401 })
    expect(handler).toHaveBeenCalledWith('session_expired')
    await expect(api.post('/auth/login', { token: 'x' }, { noAuthRedirect: true })).rejects.toMatchObject({ status: 401 })
    expect(handler).toHaveBeenCalledTimes(1)
  })
})

describe('cookies', () => {
  it('reads one cookie among several', () => {
    expect(readCookie('kiana_csrf', 'a=1; kiana_csrf=xyz; b=2')).toBe('xyz')
    expect(readCookie('missing', 'a=1')).toBe('')
  })
  it('adds no header for GET/HEAD', () => {
    expect(csrfHeaders('GET')).toEqual({})
    expect(csrfHeaders('HEAD')).toEqual({})
  })
})
