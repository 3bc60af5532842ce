// Dark and light: class="dark" on <html>, saved in localStorage (index.html applies it early).
import { ref } from 'vue'

const STORAGE_KEY = 'kiana.theme'

function initial() {
  if (typeof document === 'undefined') return 'light'
  return document.documentElement.classList.contains('dark') ? 'dark' : 'light'
}

export const theme = ref(initial())

export function setTheme(value) {
  theme.value = value === 'dark' ? 'dark' : 'light'
  document.documentElement.classList.toggle('dark', theme.value === 'dark')
  try {
    localStorage.setItem(STORAGE_KEY, theme.value)
  } catch {
    /* private mode */
  }
}

export function toggleTheme() {
  setTheme(theme.value === 'dark' ? 'light' : 'dark')
}
