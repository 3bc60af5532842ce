import { describe, expect, it } from 'vitest'
import { FINDING_CODES, chainLine, commitFindings, explainKey } from './ledger.js'
import { messages, translate } from './i18n.js'

const finding = (code, height, n) => ({ code, height, record: String(n).padStart(64, 'f'), message: `block ${height}: ${code}` })

describe('ledger verdict', () => {
  it('says the chain is OK up to its height, or names the first bad link', () => {
    const ok = chainLine({ ok: false, chain_ok: true, height: 7 }) // commit errors do not break the chain
    expect(ok).toEqual({ ok: true, key: 'sync.verifyOk', params: { height: 7 } })
    expect(translate('en', ok.key, ok.params)).toBe('Chain OK: 7 sealed blocks verified from the genesis.')
    const bad = chainLine({ ok: false, chain_ok: false, height: 1, first_bad_height: 2, code: 'bad_seal', reason: 'the seal does not verify' })
    expect(bad.ok).toBe(false)
    expect(translate('en', bad.key, bad.params)).toBe('Chain broken at block 2: the seal does not verify (blocks up to 1 are good).')
    expect(translate('de', bad.key, bad.params)).toContain('gebrochen bei Block 2')
    // an older node without chain_ok: its ok is the chain's
    expect(chainLine({ ok: true, height: 3 }).ok).toBe(true)
  })

  it('lists errors first, at most max, and counts what it leaves out', () => {
    const commits = {
      checked: 70,
      error_count: 1,
      warning_count: 60,
      errors: [finding('commit_by_revoked', 9, 1)],
      warnings: Array.from({ length: 50 }, (_, i) => finding('commit_absent', i + 1, i + 2)), // the API's bound
      private: { resolved: 2, not_checkable: 3 },
    }
    const out = commitFindings(commits, 20)
    expect(out.errorCount).toBe(1)
    expect(out.warningCount).toBe(60)
    expect(out.shown).toHaveLength(20)
    expect(out.shown[0]).toMatchObject({ level: 'error', code: 'commit_by_revoked' })
    expect(out.shown.slice(1).every((f) => f.level === 'warning')).toBe(true)
    expect(out.more).toBe(41) // 61 findings, 20 shown
    expect([out.privateResolved, out.privateOpaque]).toEqual([2, 3])
    expect(commitFindings({ checked: 0, errors: [], warnings: [] }).more).toBe(0)
    expect(commitFindings(undefined)).toBe(null) // an older node: chain result only
  })

  it('explains every finding code in English and German', () => {
    for (const code of FINDING_CODES) {
      for (const lang of ['en', 'de']) expect(messages[lang][explainKey(code)], `${lang} ${code}`).toBeTruthy()
    }
    expect(translate('en', explainKey('commit_absent'))).toBe('Committed block not on this device (not synced yet?).')
    expect(translate('de', explainKey('commit_absent'))).toContain('noch nicht synchronisiert')
    expect(translate('en', explainKey('brand_new'), { code: 'brand_new' })).toBe('Unknown finding (brand_new).')
  })
})
