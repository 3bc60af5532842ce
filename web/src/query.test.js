import { describe, expect, it } from 'vitest'
import { dateToMs, matchesClientFilters, memoryRequest, parseTags, toQuery } from './query.js'

describe('filters -> query string', () => {
  it('leaves out empty values and trims', () => {
    expect(toQuery({ a: '', b: null, c: undefined, d: ' x ', e: 0 })).toBe('?d=x&e=0')
    expect(toQuery({})).toBe('')
    expect(toQuery({ q: 'a&b c' })).toBe('?q=a%26b+c')
  })

  it('lists blocks with every filter when there are no words', () => {
    const since = new Date(2024, 4, 1).getTime()
    const until = new Date(2024, 4, 3).getTime()
    const r = memoryRequest(
      { q: '  ', kind: 'fact', scope: 'shared', tag: 'home', author: 'abcd-efgh', since: '2024-05-01', until: '2024-05-02' },
      { limit: 20, cursor: '12.3' },
    )
    expect(r.mode).toBe('list')
    expect(r.path).toBe(
      `/api/v1/blocks?limit=20&cursor=12.3&kind=fact&scope=shared&tag=home&author=abcd-efgh&since=${since}&until=${until}`,
    )
  })

  it('searches with kind, scope and tag only', () => {
    const r = memoryRequest({ q: 'boiler', kind: 'note', author: 'x', since: '2024-01-01' })
    expect(r).toEqual({ mode: 'search', path: '/api/v1/search?q=boiler&limit=50&kind=note' })
  })

  it('applies author and dates to search hits', () => {
    const created = new Date(2024, 4, 2, 12).getTime()
    const b = { author: 'dev-a', created }
    expect(matchesClientFilters(b, {})).toBe(true)
    expect(matchesClientFilters(b, { author: 'dev-b' })).toBe(false)
    expect(matchesClientFilters(b, { since: '2024-05-02', until: '2024-05-02' })).toBe(true)
    expect(matchesClientFilters(b, { since: '2024-05-03' })).toBe(false)
    expect(matchesClientFilters(b, { until: '2024-05-01' })).toBe(false)
  })

  it('parses dates and tags', () => {
    expect(dateToMs('')).toBeNull()
    expect(dateToMs('garbage')).toBeNull()
    expect(dateToMs('2024-05-01', true) - dateToMs('2024-05-01')).toBe(86400000)
    expect(parseTags(' home, work,,home , ')).toEqual(['home', 'work'])
  })
})
