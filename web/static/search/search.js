// The search page: reads the query from the address, asks /api/search (with the user's token)
// and draws facets, hits and pages. The address always holds the query, so it can be shared;
// back and forward walk through earlier searches.
import { authFetch, currentToken } from '../auth.js'
import { clearErrors, errorText, loading, showError } from '../page.js'

const form = document.getElementById('search-form')
const status = document.getElementById('search-status')
const hitList = document.getElementById('hits')
const pager = document.getElementById('pager')
const facetBoxes = [...document.querySelectorAll('.facet')]
const FACETS = facetBoxes.map(box => box.dataset.field)
const PASSED = ['q', 'sort', 'size', 'page', ...FACETS]  // what the address may carry to the API
const MAX_WINDOW = 10000  // the search API's page * size limit
const meanings = JSON.parse(document.getElementById('code-meanings').textContent)
let allValues = null  // every facet's values over everything the user may see (counts greyed against these)
let latest = 0

export const searchPage = { ready: false, lastResult: null, errors: [] }
window.searchPage = searchPage

function label (field, value) {
  if (field === 'ai.present') return value === true || value === 'true' ? 'Yes' : 'No'
  return meanings[String(value)] || String(value)
}

function learnMeanings (hit) {
  // A slide with a single code of a kind names it: its text field is that code's meaning.
  const s = hit.specimen || {}
  if ((s.anatomy_codes || []).length === 1 && s.anatomy) meanings[s.anatomy_codes[0]] ??= s.anatomy
  if ((s.stain_codes || []).length === 1 && s.stains) meanings[s.stain_codes[0]] ??= s.stains
}

function stateFromAddress () {
  const params = new URLSearchParams(location.search)
  const state = new URLSearchParams()
  for (const [k, v] of params) if (PASSED.includes(k) && v !== '') state.append(k, v)
  return state
}

function apiUrl (state, facetsOnly = false) {
  const params = facetsOnly ? new URLSearchParams({ size: '0' }) : new URLSearchParams(state)
  params.set('facet', FACETS.join(','))
  params.set('facet_size', '25')
  return `/api/search?${params}`
}

async function ask (url) {
  const response = await authFetch(url, { headers: { Accept: 'application/json' } })
  if (!response.ok) {
    const error = new Error(await errorText(response))
    error.status = response.status
    throw error
  }
  return response.json()
}

// Every facet value the user may see, over all slides: asked once per tab and user for a few minutes
// (one facet-only request; the archive's collections change slowly), so a new search asks once.
const EVERY_VALUE = 'slidearchive.facet-values'
async function everyValue (state) {
  const who = (currentToken() || '').slice(-16)
  const kept = JSON.parse(sessionStorage.getItem(EVERY_VALUE) || 'null')
  if (kept && kept.who === who && Date.now() - kept.at < 300000) return kept.facets
  const facets = (await ask(apiUrl(state, true))).facets
  sessionStorage.setItem(EVERY_VALUE, JSON.stringify({ who, at: Date.now(), facets }))
  return facets
}

function syncForm (state) {
  form.q.value = state.get('q') || ''
  form.sort.value = state.get('sort') || ''
  form.size.value = state.get('size') || form.size.options[0].value
}

function go (state) {
  history.pushState(null, '', state.toString() ? `/?${state}` : '/')
  run()
}

function drawFacets (state, result) {
  for (const box of facetBoxes) {
    const field = box.dataset.field
    const counts = new Map((result ? result.facets[field] || [] : []).map(b => [String(b.value), b.count]))
    const selected = state.getAll(field)
    const values = [...new Set([...((allValues && allValues[field]) || []).map(b => String(b.value)),
      ...counts.keys(), ...selected])]
    const list = box.querySelector('.facet-values')
    list.replaceChildren()
    if (values.length === 0) {
      const li = document.createElement('li')
      li.className = 'none'
      li.textContent = 'no values'
      list.append(li)
    }
    values.forEach((value, i) => {
      const count = counts.get(value) || 0
      const li = document.createElement('li')
      const id = `f-${FACETS.indexOf(field)}-${i}`
      const input = document.createElement('input')
      input.type = 'checkbox'
      input.id = id
      input.checked = selected.includes(value)
      input.disabled = count === 0 && !input.checked
      input.dataset.value = value
      input.addEventListener('change', () => {
        const next = stateFromAddress()
        const kept = next.getAll(field).filter(v => v !== value)
        next.delete(field)
        for (const v of input.checked ? [...kept, value] : kept) next.append(field, v)
        next.delete('page')
        go(next)
      })
      const text = document.createElement('label')
      text.htmlFor = id
      text.textContent = label(field, value)
      text.title = value
      const n = document.createElement('span')
      n.className = 'count'
      n.textContent = count.toLocaleString('en')
      n.setAttribute('aria-label', `${count} slides`)
      if (count === 0) li.classList.add('empty')
      const left = document.createElement('span')
      left.append(input, ' ', text)
      li.append(left, n)
      list.append(li)
    })
  }
}

function fact (dl, term, value) {
  if (value === undefined || value === null || value === '') return
  const dt = document.createElement('dt')
  dt.textContent = term
  const dd = document.createElement('dd')
  dd.textContent = value
  dl.append(dt, dd)
}

function codes (list) {
  return (list || []).map(c => meanings[c] || c).join(', ')
}

async function loadThumbnail (img, hit) {
  try {
    const response = await authFetch(`/dicomweb/studies/${hit.study_uid}/series/${hit.series_uid}/thumbnail?viewport=256,192`,
      { headers: { Accept: 'image/jpeg' } })
    if (!response.ok) throw new Error(`HTTP ${response.status}`)
    img.src = URL.createObjectURL(await response.blob())
    img.addEventListener('load', () => URL.revokeObjectURL(img.src), { once: true })
  } catch (e) {
    img.classList.add('failed')
    img.alt = 'No thumbnail for this slide'
  }
}

function drawHit (hit) {
  learnMeanings(hit)
  const li = document.createElement('li')
  li.className = 'hit'
  const href = `/slides/${encodeURIComponent(hit.series_uid)}`
  const title = (hit.series && hit.series.description) || (hit.specimen && hit.specimen.anatomy) || 'Slide'
  const thumbLink = document.createElement('a')
  thumbLink.href = href
  thumbLink.tabIndex = -1
  thumbLink.setAttribute('aria-hidden', 'true')
  const img = document.createElement('img')
  img.className = 'thumb'
  img.alt = ''
  img.width = 256
  img.height = 192
  thumbLink.append(img)
  const h3 = document.createElement('h3')
  const a = document.createElement('a')
  a.href = href
  a.textContent = title
  h3.append(a)
  const dl = document.createElement('dl')
  const s = hit.specimen || {}
  const p = hit.pyramid || {}
  fact(dl, 'Collection', (hit.collections || [hit.collection]).filter(Boolean).join(', '))
  fact(dl, 'Organ', codes(s.anatomy_codes) || s.anatomy)
  fact(dl, 'Stain', codes(s.stain_codes))
  fact(dl, 'Scanner', [hit.scanner && hit.scanner.manufacturer, hit.scanner && hit.scanner.model].filter(Boolean).join(' '))
  fact(dl, 'Size', p.width ? `${p.width.toLocaleString('en')} × ${p.height.toLocaleString('en')} px, ${p.level_count} levels` : '')
  fact(dl, 'Magnification', hit.magnification ? `${hit.magnification}×` : '')
  fact(dl, 'Study date', hit.study && hit.study.date ? hit.study.date.replace(/^(\d{4})(\d\d)(\d\d)$/, '$1-$2-$3') : '')
  const n = (hit.ai && hit.ai.annotation_count) || 0
  fact(dl, 'AI results', hit.ai && hit.ai.present
    ? `${(hit.ai.algorithms || []).join(', ') || 'yes'} (${n.toLocaleString('en')} annotation${n === 1 ? '' : 's'})` : 'none')
  li.append(thumbLink, h3, dl)
  loadThumbnail(img, hit)
  return li
}

function pageLink (state, page, text, current) {
  if (current) {
    const span = document.createElement('span')
    span.textContent = text
    span.setAttribute('aria-current', 'page')
    return span
  }
  const next = new URLSearchParams(state)
  next.set('page', String(page))
  const a = document.createElement('a')
  a.href = `/?${next}`
  a.textContent = text
  a.addEventListener('click', e => { e.preventDefault(); go(next) })
  return a
}

function drawPager (state, result) {
  pager.replaceChildren()
  const size = result.size || 20
  const last = Math.max(1, Math.min(Math.ceil(result.total / size), Math.floor(MAX_WINDOW / size)))
  const page = result.page
  if (last === 1) return
  if (page > 1) pager.append(pageLink(state, page - 1, 'Previous'))
  const first = Math.max(1, page - 3)
  for (let n = first; n <= Math.min(last, first + 6); n++) pager.append(pageLink(state, n, String(n), n === page))
  if (page < last) pager.append(pageLink(state, page + 1, 'Next'))
}

function setStatus (text, busy) {
  status.textContent = text
  status.classList.toggle('busy', busy)
}

async function run () {
  const seq = ++latest
  const state = stateFromAddress()
  searchPage.ready = false
  syncForm(state)
  clearErrors()
  setStatus('Searching…', true)
  loading(true)
  try {
    const [every, result] = await Promise.all([allValues || everyValue(state), ask(apiUrl(state))])
    allValues = every
    if (seq !== latest) return
    searchPage.lastResult = result
    drawFacets(state, result)
    hitList.replaceChildren(...result.hits.map(drawHit))
    drawPager(state, result)
    const from = result.total ? (result.page - 1) * result.size + 1 : 0
    const to = (result.page - 1) * result.size + result.hits.length
    setStatus(result.total === 0 ? 'No slides match this search.'
      : `${result.total.toLocaleString('en')} slide${result.total === 1 ? '' : 's'} found; showing ${from}–${to}.`, false)
  } catch (e) {
    if (seq !== latest) return
    const message = e.status === 400 ? `The search could not be answered: ${e.message}. Change the search and try again.`
      : e.status === 503 ? `The search index is unavailable just now: ${e.message}. Try again in a moment.`
        : e.status === 401 ? `Please log in to search: ${e.message}.`
          : `The search failed: ${e.message}.`
    searchPage.errors.push(message)
    showError(message)
    hitList.replaceChildren()
    pager.replaceChildren()
    drawFacets(state, null)
    setStatus('No results.', false)
  } finally {
    loading(false)
    if (seq === latest) {
      searchPage.readyAt = performance.now()  // ms after navigation start (bench/web_search_bench.py)
      searchPage.ready = true
    }
  }
}

form.addEventListener('submit', e => {
  e.preventDefault()
  const next = stateFromAddress()
  for (const name of ['q', 'sort', 'size']) {
    const value = form[name].value.trim()
    const isDefault = name === 'size' && value === form.size.options[0].value
    if (value && !isDefault) next.set(name, value); else next.delete(name)
  }
  next.delete('page')
  go(next)
})
window.addEventListener('popstate', run)
run()
