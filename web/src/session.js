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

/**
 * What a login link carries in its fragment (never sent to the server):
 * `/login#once=NONCE` (a one-time link from `kiana open`) or `/login#token=TOKEN`.
 * Returns { once } or { token }, or null.
 */
export function credentialFromHash(hash) {
  const params = new URLSearchParams((hash || '').replace(/^#/, ''))
  const once = params.get('once')
  if (once) return { once }
  const token = params.get('token')
  return token ? { token } : null
}

const LINK_MESSAGES = {
  link_used: 'login.linkUsed',
  link_expired: 'login.linkExpired',
  link_invalid: 'login.linkInvalid',
}

/** The message key for a failed login, or null when the API's own message should show. */
export function loginErrorKey(err) {
  if (!err) return null
  if (LINK_MESSAGES[err.code]) return LINK_MESSAGES[err.code]
  return err.status === 401 ? 'login.wrong' : null
}
