import { describe, expect, it } from 'vitest'
import { formatAgo, formatBytes, formatNumber, formatRtt, formatTime, shortId } from './format.js'

describe('formatters', () => {
  it('formats byte counts', () => {
    expect(formatBytes(0)).toBe('0 B')
    expect(formatBytes(1023)).toBe('1023 B')
    expect(formatBytes(1536)).toBe('1.5 KiB')
    expect(formatBytes(50 * 1024 * 1024)).toBe('50 MiB')
    expect(formatBytes(null)).toBe('—')
  })

  it('formats round-trip times', () => {
    expect(formatRtt(3.14159)).toBe('3.1 ms')
    expect(formatRtt(42.7)).toBe('43 ms')
    expect(formatRtt(null)).toBe('—')
  })

  it('formats relative times in English and German', () => {
    const now = 1_700_000_000_000
    expect(formatAgo(now - 5 * 60 * 1000, 'en', now)).toMatch(/5 min/)
    expect(formatAgo(now - 2 * 3600 * 1000, 'de', now)).toMatch(/vor 2 Std/)
    expect(formatAgo(now - 3 * 86400 * 1000, 'en', now)).toMatch(/3 days ago/)
    expect(formatAgo(null)).toBe('—')
  })

  it('formats absolute times and numbers', () => {
    expect(formatTime(null)).toBe('—')
    expect(formatTime(Date.UTC(2024, 4, 1, 12), 'en')).toMatch(/2024/)
    expect(formatNumber(12345, 'de')).toBe('12.345')
    expect(formatNumber(12345, 'en')).toBe('12,345')
  })

  it('shortens ids', () => {
    expect(shortId('abcdef0123456789', 6)).toBe('abcdef…')
    expect(shortId('abc', 6)).toBe('abc')
    expect(shortId(null)).toBe('')
  })
})
