import { describe, expect, it } from 'vitest'
import { mount } from '@vue/test-utils'
import { setLanguage } from '../i18n.js'
import BlockDialog from './BlockDialog.vue'
import ChatMessage from './ChatMessage.vue'

const block = {
  id: 'cd'.repeat(32), kind: 'fact', scope: 'shared', body: 'The boiler is serviced in May.',
  meta: { tags: ['home'] }, author: 'aaaa-bbbb-cccc-dddd', created: Date.UTC(2024, 4, 1), refs: [], sig: '', v: 1,
}
const provenance = { author: block.author, author_name: 'laptop', role: 'member', created: block.created, valid: true, error: '' }

describe('ChatMessage', () => {
  it('shows citation chips that open the cited block', async () => {
    setLanguage('en')
    const w = mount(ChatMessage, {
      props: { message: { role: 'assistant', text: 'In May [1].', streaming: false, citations: [{ n: 1, block, provenance }] } },
    })
    expect(w.get('[data-testid="chat-answer"]').text()).toContain('In May [1].')
    const chip = w.get('[data-testid="citation-chip"]')
    expect(chip.attributes('aria-label')).toContain('Open source 1')
    await chip.trigger('click')
    expect(w.emitted('open')[0][0]).toEqual({ id: block.id, initial: { block, provenance } })
    expect(w.find('[data-testid="remember-button"]').exists()).toBe(true)
  })

  it('shows no remember button while streaming', () => {
    const w = mount(ChatMessage, { props: { message: { role: 'assistant', text: 'In', streaming: true } } })
    expect(w.find('[data-testid="remember-button"]').exists()).toBe(false)
  })
})

describe('BlockDialog', () => {
  it('shows the text, author device, time and "verified" from a citation', async () => {
    const w = mount(BlockDialog, { props: { blockId: block.id, initial: { block, provenance } }, attachTo: document.body })
    await w.vm.$nextTick()
    expect(w.get('[data-testid="block-text"]').text()).toBe(block.body)
    expect(w.get('[data-testid="block-author"]').text()).toContain('laptop')
    expect(w.get('[data-testid="block-verified"]').text()).toContain('verified')
    w.unmount()
  })
})
