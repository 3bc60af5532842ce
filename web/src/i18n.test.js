import { describe, expect, it } from 'vitest'
import { detectLanguage, lang, messages, setLanguage, t, translate } from './i18n.js'

describe('i18n', () => {
  it('picks the saved language, else the first known browser language, else English', () => {
    expect(detectLanguage('de', ['en-US'])).toBe('de')
    expect(detectLanguage(null, ['fr-FR', 'de-AT', 'en'])).toBe('de')
    expect(detectLanguage('xx', ['fr'])).toBe('en')
    expect(detectLanguage(null, [])).toBe('en')
  })

  it('falls back to English, then to the key', () => {
    messages.en['test.only'] = 'only in English'
    expect(translate('de', 'test.only')).toBe('only in English')
    expect(translate('de', 'no.such.key')).toBe('no.such.key')
    delete messages.en['test.only']
  })

  it('fills in {params}, leaving unknown ones as they are', () => {
    expect(translate('en', 'sync.behind', { n: 3 })).toBe('behind by 3')
    expect(translate('de', 'sync.behind', { n: 3 })).toBe('3 im Rückstand')
    expect(translate('en', 'sync.behind')).toBe('behind by {n}')
  })

  it('picks the singular or plural form by {n}', () => {
    expect(translate('en', 'sync.recordCount', { n: 1 })).toBe('1 record')
    expect(translate('en', 'sync.recordCount', { n: 2 })).toBe('2 records')
    expect(translate('en', 'sync.recordCount', { n: 0 })).toBe('0 records')
    expect(translate('de', 'sync.recordCount', { n: 1 })).toBe('1 Eintrag')
    expect(translate('de', 'sync.recordCount', { n: 5 })).toBe('5 Einträge')
  })

  it('switches, saves the choice and sets <html lang>', () => {
    setLanguage('de')
    expect(lang.value).toBe('de')
    expect(t('nav.memory')).toBe('Gedächtnis')
    expect(localStorage.getItem('kiana.lang')).toBe('de')
    expect(document.documentElement.lang).toBe('de')
    setLanguage('klingon')
    expect(lang.value).toBe('de')
    setLanguage('en')
    expect(t('nav.memory')).toBe('Memory')
  })

  it('has the same keys in English and German', () => {
    expect(Object.keys(messages.de).sort()).toEqual(Object.keys(messages.en).sort())
  })
})
