// The ledger check (/api/v1/ledger/verify) for people: the chain line, the commit
// counts and the findings to list, each with a plain-language explanation key.

export const FINDING_CODES = [
  'commit_absent',
  'erase_absent',
  'commit_before_member',
  'commit_by_revoked',
  'private_id_in_ledger',
]

/** The translation key and params of the chain line: OK up to N, or the first bad link. */
export function chainLine(verdict) {
  const ok = verdict.chain_ok ?? verdict.ok
  if (ok) return { ok: true, key: 'sync.verifyOk', params: { height: verdict.height } }
  return {
    ok: false,
    key: 'sync.verifyBad',
    params: { bad: verdict.first_bad_height ?? '?', height: verdict.height ?? 0, reason: verdict.reason || verdict.code || '' },
  }
}

/** Counts, and at most ``max`` findings (errors first, lowest height first), and how many more. */
export function commitFindings(commits, max = 20) {
  if (!commits) return null
  const errors = commits.errors || []
  const warnings = commits.warnings || []
  const errorCount = commits.error_count ?? errors.length
  const warningCount = commits.warning_count ?? warnings.length
  const all = [
    ...errors.map((f) => ({ ...f, level: 'error' })),
    ...warnings.map((f) => ({ ...f, level: 'warning' })),
  ]
  const shown = all.slice(0, max)
  return {
    checked: commits.checked ?? 0,
    errorCount,
    warningCount,
    privateResolved: commits.private?.resolved ?? 0,
    privateOpaque: commits.private?.not_checkable ?? 0,
    shown,
    more: errorCount + warningCount - shown.length,
  }
}

/** The key of a finding's plain-language explanation (unknown codes get a generic one). */
export function explainKey(code) {
  return FINDING_CODES.includes(code) ? `ledger.finding.${code}` : 'ledger.finding.unknown'
}
