// The one way the dashboard talks to the node: same-origin fetch with the session
// cookie, the CSRF header on every non-GET, and one error shape for the pages.
import { reactive } from 'vue'

/** Shared connection state: the "node not reachable" banner and why login is shown. */
export const connection = reactive({ offline: false, authMessage: '' })

let onUnauthorized = () => {}
/** Called with a message key when the API answers 401 (the router sends us to login). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn
}

export class ApiError extends Error {
  constructor(status, code, message, detail = null) {
    super(message)
    this.name = 'ApiError'
    this.status = status
    this.code = code
    this.detail = detail
  }
}

export function readCookie(name, cookies = typeof document === 'undefined' ? '' : document.cookie) {
  for (const part of cookies.split(';')) {
    const eq = part.indexOf('=')
    if (eq === -1) continue
    if (part.slice(0, eq).trim() === name) return decodeURIComponent(part.slice(eq + 1).trim())
  }
  return ''
}

export function csrfHeaders(method) {
  if (method === 'GET' || method === 'HEAD') return {}
  const token = readCookie('kiana_csrf')
  return token ? { 'X-CSRF-Token': token } : {}
}

/** Turn a non-2xx response body into an ApiError ({"error": {code, message}} or anything else). */
export function errorFromBody(status, body) {
  const err = body && typeof body === 'object' ? body.error : null
  if (err && typeof err === 'object' && err.message) {
    return new ApiError(status, err.code || `http_${status}`, err.message, err)
  }
  if (body && typeof body === 'object' && typeof body.detail === 'string') {
    return new ApiError(status, `http_${status}`, body.detail)
  }
  const text = typeof body === 'string' && body.trim() ? body.trim().slice(0, 300) : ''
  return new ApiError(status, `http_${status}`, text || `HTTP ${status}`)
}

export function networkError(cause) {
  const err = new ApiError(0, 'network', 'the node is not reachable')
  err.cause = cause
  return err
}

async function parseBody(res) {
  const text = await res.text()
  if (!text) return null
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

function unauthorized(err, opts) {
  if (err.status === 401 && !opts.noAuthRedirect) onUnauthorized('session_expired')
}

/**
 * Send a request. Returns the raw Response when opts.raw (for streams), else the JSON body.
 * Throws ApiError: status 0 / code "network" when the node cannot be reached.
 */
export async function request(method, path, body, opts = {}) {
  const headers = { Accept: 'application/json', ...csrfHeaders(method), ...(opts.headers || {}) }
  let payload
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json'
    payload = JSON.stringify(body)
  }
  let res
  try {
    res = await fetch(path, { method, headers, body: payload, credentials: 'same-origin', signal: opts.signal })
  } catch (cause) {
    if (cause && cause.name === 'AbortError') throw cause
    connection.offline = true
    throw networkError(cause)
  }
  connection.offline = false
  if (!res.ok) {
    const err = errorFromBody(res.status, await parseBody(res))
    unauthorized(err, opts)
    throw err
  }
  if (opts.raw) return res
  return parseBody(res)
}

export const api = {
  get: (path, opts) => request('GET', path, undefined, opts),
  post: (path, body = {}, opts) => request('POST', path, body, opts),
  put: (path, body, opts) => request('PUT', path, body, opts),
  del: (path, opts) => request('DELETE', path, undefined, opts),
}

/** Upload a file's bytes to POST /api/v1/files?name=…, reporting progress (0..1). */
export function uploadFile(file, onProgress = () => {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest()
    xhr.open('POST', `/api/v1/files?name=${encodeURIComponent(file.name)}`)
    xhr.withCredentials = true
    for (const [k, v] of Object.entries(csrfHeaders('POST'))) xhr.setRequestHeader(k, v)
    xhr.setRequestHeader('Content-Type', file.type || (/\.(md|markdown)$/i.test(file.name) ? 'text/markdown' : 'text/plain'))
    xhr.setRequestHeader('Accept', 'application/json')
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total)
    xhr.onerror = () => {
      connection.offline = true
      reject(networkError(null))
    }
    xhr.onload = () => {
      connection.offline = false
      let body = xhr.responseText
      try {
        body = JSON.parse(body)
      } catch {
        /* not JSON */
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1)
        resolve(body)
      } else {
        const err = errorFromBody(xhr.status, body)
        unauthorized(err, {})
        reject(err)
      }
    }
    xhr.send(file)
  })
}

/** Is someone logged in? (GET /auth/me; a network failure is thrown.) */
export async function authenticated() {
  const me = await api.get('/auth/me', { noAuthRedirect: true })
  return !!(me && me.authenticated)
}

/** Log in with { token } (the API token) or { once } (a one-time link's nonce). */
export async function login(credential) {
  return api.post('/auth/login', credential, { noAuthRedirect: true })
}

export async function logout() {
  try {
    await api.post('/auth/logout', {}, { noAuthRedirect: true })
  } catch {
    /* logged out either way */
  }
}

/** Unique error text for a page: the API's message, or the offline sentence. */
export function errorText(err, t) {
  if (!err) return ''
  if (err.code === 'network') return t('error.offline')
  return err.message || String(err)
}
