import { describe, expect, it } from 'vitest'
import { mount } from '@vue/test-utils'
import { setLanguage } from '../i18n.js'
import LedgerVerdict from './LedgerVerdict.vue'

const record = (c) => c.repeat(64)
const verdict = {
  ok: false,
  chain_ok: true,
  height: 4,
  first_bad_height: null,
  code: null,
  reason: null,
  commits: {
    checked: 5,
    error_count: 1,
    warning_count: 2,
    errors: [{ code: 'private_id_in_ledger', height: 2, record: record('a'), message: 'block 2: a commit record names private block 0123456789ab' }],
    warnings: [
      { code: 'commit_absent', height: 3, record: record('b'), message: 'block 3 commits abababababab, which is not on this device' },
      { code: 'commit_before_member', height: 4, record: record('c'), message: 'block 4 commits cdcdcdcdcdcd by x, not a member' },
    ],
    private: { resolved: 1, not_checkable: 0 },
  },
}

describe('LedgerVerdict', () => {
  it('shows the chain line, the counts and each finding in words, errors marked as errors', () => {
    setLanguage('en')
    const w = mount(LedgerVerdict, { props: { verdict } })
    expect(w.get('[data-testid="ledger-verdict"]').attributes('role')).toBe('status')
    expect(w.get('[data-testid="ledger-chain"]').text()).toContain('Chain OK: 4 sealed blocks verified')
    expect(w.get('[data-testid="ledger-counts"]').text()).toBe('Errors: 1 · Warnings: 2')
    expect(w.get('[data-testid="ledger-findings"]').attributes('aria-label')).toBe('Commit findings')
    const items = w.findAll('[data-testid="ledger-finding"]')
    expect(items.map((i) => i.attributes('data-level'))).toEqual(['error', 'warning', 'warning'])
    // severity in words, not colour only; the error has the error style
    expect(items[0].text()).toMatch(/^Error:/)
    expect(items[0].classes()).toContain('border-red-700')
    expect(items[0].text()).toContain('Ledger block #2 · record aaaaaaaaaaaa…')
    expect(items[1].text()).toMatch(/^Warning:/)
    expect(items[1].classes()).toContain('border-amber-700')
    expect(items[1].text()).toContain('Committed block not on this device (not synced yet?).')
    expect(items[1].text()).toContain('abababababab') // the technical message, with the block id
    expect(w.find('[data-testid="ledger-more"]').exists()).toBe(false)
  })

  it('says so in German, points at the first bad link, and counts findings not shown', () => {
    setLanguage('de')
    const broken = { ...verdict, chain_ok: false, height: 1, first_bad_height: 2, reason: 'bad seal' }
    const w = mount(LedgerVerdict, { props: { verdict: broken, max: 1 } })
    const chain = w.get('[data-testid="ledger-chain"]')
    expect(chain.text()).toContain('Kette gebrochen bei Block 2: bad seal')
    expect(chain.attributes('data-ok')).toBe('false')
    expect(w.findAll('[data-testid="ledger-finding"]')).toHaveLength(1)
    expect(w.get('[data-testid="ledger-finding"]').text()).toMatch(/^Fehler:/)
    expect(w.get('[data-testid="ledger-more"]').text()).toContain('2 weitere')
    setLanguage('en')
  })

  it('says every commit checks out when there are no findings', () => {
    setLanguage('en')
    const clean = { ...verdict, ok: true, commits: { checked: 3, error_count: 0, warning_count: 0, errors: [], warnings: [], private: { resolved: 0, not_checkable: 0 } } }
    const w = mount(LedgerVerdict, { props: { verdict: clean } })
    expect(w.get('[data-testid="ledger-clean"]').text()).toBe('Every commit record checks out on this device.')
    expect(w.find('[data-testid="ledger-findings"]').exists()).toBe(false)
  })
})
