// English and German UI text. t(key, params) looks in the current language, then
// English, then shows the key itself. The language comes from the browser unless
// the user picked one (saved in localStorage).
import { ref } from 'vue'
import en from './locales/en.js'
import de from './locales/de.js'

export const messages = { en, de }
export const languages = [
  { code: 'en', label: 'English' },
  { code: 'de', label: 'Deutsch' },
]
const STORAGE_KEY = 'kiana.lang'

export function detectLanguage(saved, browserLanguages = []) {
  if (saved && messages[saved]) return saved
  for (const tag of browserLanguages) {
    const base = String(tag || '').toLowerCase().split('-')[0]
    if (messages[base]) return base
  }
  return 'en'
}

function saved() {
  try {
    return localStorage.getItem(STORAGE_KEY)
  } catch {
    return null
  }
}

function browserLanguages() {
  if (typeof navigator === 'undefined') return []
  return navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language]
}

export const lang = ref(detectLanguage(saved(), browserLanguages()))

export function setLanguage(code) {
  if (!messages[code]) return
  lang.value = code
  try {
    localStorage.setItem(STORAGE_KEY, code)
  } catch {
    /* private mode */
  }
  if (typeof document !== 'undefined') document.documentElement.lang = code
}

export function translate(language, key, params) {
  let text = messages[language]?.[key] ?? messages.en[key] ?? key
  if (!params) return text
  // "one | many": the first form when params.n is 1 ("1 record", "2 records")
  const forms = text.split(' | ')
  if (forms.length === 2 && params.n !== undefined) text = Number(params.n) === 1 ? forms[0] : forms[1]
  return text.replace(/\{(\w+)\}/g, (m, name) => (params[name] ?? m).toString())
}

/** Translate in the current language (reactive: components re-render on a switch). */
export function t(key, params) {
  return translate(lang.value, key, params)
}

if (typeof document !== 'undefined') document.documentElement.lang = lang.value
