// Who is logged in, shared by the router guard, the login page and the header.
import { reactive } from 'vue'
import { authenticated, connection } from './api.js'

export const session = reactive({ authed: null })

/** Ask the node once (GET /auth/me); later calls reuse the answer. */
export async function checkSession() {
  if (session.authed !== null) return session.authed
  try {
    session.authed = await authenticated()
  } catch (err) {
    if (err.code === 'network') {
      connection.offline = true
      return null // unknown: let the page load and show the banner
    }
    session.authed = false
  }
  return session.authed
}

/** A login link (/login#token=XYZ) carries the token in the fragment. */
export function tokenFromHash(hash) {
  const params = new URLSearchParams((hash || '').replace(/^#/, ''))
  return params.get('token') || ''
}
