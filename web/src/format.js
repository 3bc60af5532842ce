// Formatters for times, sizes and ids. `lang` is "en" or "de".

export function formatTime(ms, lang = 'en') {
  if (ms === null || ms === undefined) return '—'
  return new Date(ms).toLocaleString(lang === 'de' ? 'de-DE' : 'en-GB', {
    dateStyle: 'medium',
    timeStyle: 'short',
  })
}

/** "5 min ago" / "vor 5 Min." relative to `now`. */
export function formatAgo(ms, lang = 'en', now = Date.now()) {
  if (ms === null || ms === undefined) return '—'
  const s = Math.round((ms - now) / 1000)
  const rtf = new Intl.RelativeTimeFormat(lang, { numeric: 'auto', style: 'short' })
  const abs = Math.abs(s)
  if (abs < 60) return rtf.format(s, 'second')
  if (abs < 3600) return rtf.format(Math.round(s / 60), 'minute')
  if (abs < 86400) return rtf.format(Math.round(s / 3600), 'hour')
  return rtf.format(Math.round(s / 86400), 'day')
}

export function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—'
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n / 1024
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`
}

export function formatRtt(ms) {
  if (ms === null || ms === undefined) return '—'
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`
}

/** First characters of a long hex id. */
export function shortId(id, n = 10) {
  if (!id) return ''
  return id.length > n ? id.slice(0, n) + '…' : id
}

export function formatNumber(n, lang = 'en') {
  if (n === null || n === undefined) return '—'
  return new Intl.NumberFormat(lang).format(n)
}
