// Memory filters -> API query strings.

const DAY_MS = 24 * 60 * 60 * 1000

/** "2024-05-01" (a date input's value) -> ms at local midnight; '' -> null. */
export function dateToMs(value, endOfDay = false) {
  if (!value) return null
  const [y, m, d] = value.split('-').map(Number)
  if (!y || !m || !d) return null
  const ms = new Date(y, m - 1, d).getTime()
  return endOfDay ? ms + DAY_MS : ms
}

/** Build "?a=1&b=2" from an object, leaving out empty values ('' / null / undefined). */
export function toQuery(params) {
  const q = new URLSearchParams()
  for (const [key, value] of Object.entries(params)) {
    if (value === '' || value === null || value === undefined) continue
    const text = String(value).trim()
    if (text) q.set(key, text)
  }
  const s = q.toString()
  return s ? `?${s}` : ''
}

/**
 * Which request a set of memory filters makes.
 * With words to find: GET /search (kind, scope, tag; author and dates are applied
 * to the hits by `matchesClientFilters`). Without: GET /blocks with every filter.
 */
export function memoryRequest(filters, { limit = 50, cursor = null } = {}) {
  const f = filters || {}
  const q = (f.q || '').trim()
  if (q) {
    return {
      mode: 'search',
      path: '/api/v1/search' + toQuery({ q, limit, kind: f.kind, scope: f.scope, tag: f.tag }),
    }
  }
  return {
    mode: 'list',
    path:
      '/api/v1/blocks' +
      toQuery({
        limit,
        cursor,
        kind: f.kind,
        scope: f.scope,
        tag: f.tag,
        author: f.author,
        since: dateToMs(f.since),
        until: dateToMs(f.until, true),
      }),
  }
}

/** The filters search cannot send: author and the date range. */
export function matchesClientFilters(block, filters) {
  const f = filters || {}
  if (f.author && block.author !== f.author) return false
  const since = dateToMs(f.since)
  const until = dateToMs(f.until, true)
  if (since !== null && block.created < since) return false
  if (until !== null && block.created >= until) return false
  return true
}

/** "a, b ,, c" -> ["a", "b", "c"] (unique, in order). */
export function parseTags(text) {
  const out = []
  for (const part of (text || '').split(',')) {
    const tag = part.trim()
    if (tag && !out.includes(tag)) out.push(tag)
  }
  return out
}
