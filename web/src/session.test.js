import { describe, expect, it } from 'vitest'
import { ApiError } from './api.js'
import { credentialFromHash, loginErrorKey } from './session.js'

describe('login links', () => {
  it('reads a one-time nonce or a token from the fragment', () => {
    expect(credentialFromHash('#once=abc_DEF-123')).toEqual({ once: 'abc_DEF-123' })
    expect(credentialFromHash('#token=t0ken')).toEqual({ token: 't0ken' })
    expect(credentialFromHash('once=n1')).toEqual({ once: 'n1' })
    expect(credentialFromHash('#once=n1&token=t')).toEqual({ once: 'n1' })
  })
  it('finds nothing in an empty or foreign fragment', () => {
    expect(credentialFromHash('')).toBeNull()
    expect(credentialFromHash(undefined)).toBeNull()
    expect(credentialFromHash('#once=')).toBeNull()
    expect(credentialFromHash('#section-2')).toBeNull()
  })
  it('says why a link did not work', () => {
    const fail = (code) => new ApiError(401, code, 'x')
    expect(loginErrorKey(fail('link_used'))).toBe('login.linkUsed')
    expect(loginErrorKey(fail('link_expired'))).toBe('login.linkExpired')
    expect(loginErrorKey(fail('link_invalid'))).toBe('login.linkInvalid')
    expect(loginErrorKey(fail('unauthorized'))).toBe('login.wrong')
    expect(loginErrorKey(new ApiError(429, 'rate_limited', 'wait'))).toBeNull()
    expect(loginErrorKey(null)).toBeNull()
  })
})
