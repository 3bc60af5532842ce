// Live updates: one EventSource on /api/v1/events (cookie auth) shared by all pages.
// Pages subscribe with `onLive(name, fn)` and unsubscribe on unmount.
import { onMounted, onUnmounted, ref } from 'vue'

const listeners = new Map() // event name -> Set of callbacks
/** The last data of each event: the stream starts with a snapshot, then sends changes. */
export const lastData = {}
const NAMES = ['blocks', 'peers', 'sync']
let source = null
let retry = null
let delay = 2000
export const live = ref(false)

function dispatch(name, ev) {
  let data = null
  try {
    data = JSON.parse(ev.data)
  } catch {
    return
  }
  lastData[name] = data
  for (const fn of listeners.get(name) || []) fn(data)
}

export function startLive() {
  if (source || typeof EventSource === 'undefined') return
  source = new EventSource('/api/v1/events', { withCredentials: true })
  source.onopen = () => {
    live.value = true
    delay = 2000
  }
  for (const name of NAMES) source.addEventListener(name, (ev) => dispatch(name, ev))
  source.onerror = () => {
    live.value = false
    // The browser retries by itself unless the server refused (then CLOSED): retry later.
    if (source && source.readyState === 2) {
      source = null
      retry = setTimeout(startLive, delay)
      delay = Math.min(delay * 2, 60000)
    }
  }
}

export function stopLive() {
  for (const key of Object.keys(lastData)) delete lastData[key]
  clearTimeout(retry)
  retry = null
  if (source) source.close()
  source = null
  live.value = false
}

export function subscribe(name, fn) {
  if (!listeners.has(name)) listeners.set(name, new Set())
  listeners.get(name).add(fn)
  return () => listeners.get(name).delete(fn)
}

/** In a component: run fn(data) for each live `name` event while it is mounted. */
export function onLive(name, fn) {
  let off = null
  onMounted(() => (off = subscribe(name, fn)))
  onUnmounted(() => off && off())
}

/** A key for a `blocks` event: changes when blocks arrive or are erased. */
export function blocksKey(data) {
  return data ? `${data.total}:${(data.latest || []).join(',')}` : null
}
