// The slide page: viewer, metadata, AI results as overlays, annotating, downloads.
// State a test or benchmark may read is on window.slidePage (firstDrawn: ms after
// navigation start when the first viewport was fully drawn).

import { Annotator, TOOLS } from './annotate.js'
import { describeError, download, getJSON, headers, openSlide } from './common.js'
import { Overlays, propertyColour, resultTitle } from './overlays.js'
import { installKeys } from './keys.js'

const page = (window.slidePage = { firstDrawn: null, drawCount: 0, errors: [] })
const $ = (id) => document.getElementById(id)
const series = document.body.dataset.series

function status(text, busy) {
  const el = $('slide-status')
  el.textContent = text
  el.dataset.busy = busy ? 'true' : 'false'
}

function showError(text) {
  page.errors.push(text)
  const box = $('slide-error')
  box.hidden = false
  const item = document.createElement('p')
  item.textContent = text
  box.appendChild(item)
}

function fact(list, term, value) {
  if (value === null || value === undefined || value === '' || (Array.isArray(value) && !value.length)) return
  const dt = document.createElement('dt')
  dt.textContent = term
  const dd = document.createElement('dd')
  dd.textContent = Array.isArray(value) ? value.join(', ') : String(value)
  list.append(dt, dd)
}

function showSummary(summary) {
  const list = $('slide-facts')
  list.replaceChildren()
  const s = summary.specimen || {}
  fact(list, 'Specimen', s.ids && s.ids.filter(Boolean))
  fact(list, 'Anatomy', s.anatomy)
  fact(list, 'Stain', s.stains)
  fact(list, 'Preparation', s.preparation)
  fact(list, 'Description', summary.description || s.description)
  const sc = summary.scanner || {}
  fact(list, 'Scanner', [sc.manufacturer, sc.model].filter(Boolean).join(' '))
  fact(list, 'Scanner software', sc.software_versions)
  fact(list, 'Magnification', summary.magnification ? `${summary.magnification}x` : null)
  fact(list, 'Pixel spacing', summary.pixel_spacing_um ? `${summary.pixel_spacing_um} µm` : null)
  const levels = $('slide-levels')
  levels.replaceChildren()
  summary.levels.forEach((level, i) => {
    const li = document.createElement('li')
    li.textContent = `level ${i}: ${level.columns} × ${level.rows} px` +
      (level.tile && level.tile[0] ? `, tiles ${level.tile[0]} × ${level.tile[1]}` : '') +
      (level.frames ? `, ${level.frames} frames` : '')
    levels.appendChild(li)
  })
  const thumb = $('slide-thumbnail')
  thumbnail(thumb, summary.downloads.thumbnail)
  $('download-slide').onclick = () => download(`/api/download/${summary.study}/${series}`, `slide-${series}.tar`)
    .catch((e) => showError(e.message))
}

async function thumbnail(img, url) {
  try {
    const response = await fetch(`${url}?viewport=256,256`, { headers: await headers({ Accept: 'image/jpeg' }) })
    if (!response.ok) return
    img.src = URL.createObjectURL(await response.blob())
    img.hidden = false
  } catch (_e) {
    // the overview is a nicety; the viewer shows the slide
  }
}

function resultRow(result, overlays) {
  const li = document.createElement('li')
  li.dataset.instance = result.sop_instance
  const id = `overlay-${result.sop_instance}`
  const box = document.createElement('input')
  box.type = 'checkbox'
  box.id = id
  const label = document.createElement('label')
  label.htmlFor = id
  const count = result.groups.reduce((n, g) => n + (g.annotation_count || 0), 0)
  label.textContent = `${resultTitle(result)} · ${result.kind}` + (count ? ` · ${count.toLocaleString()} annotation${count === 1 ? '' : 's'}` : '') +
    (result.current ? '' : ' · superseded')
  const groups = document.createElement('ul')
  groups.className = 'groups'
  for (const g of result.groups) {
    const gi = document.createElement('li')
    const swatch = document.createElement('span')
    swatch.className = 'swatch'
    swatch.style.background = `rgb(${propertyColour(g).join(',')})`
    gi.append(swatch, `${g.label || g.property_type.meaning || 'group'}${g.graphic_type ? ` (${g.graphic_type.toLowerCase()})` : ''}`)
    groups.appendChild(gi)
  }
  const links = document.createElement('span')
  links.className = 'links'
  const dicom = document.createElement('button')
  dicom.type = 'button'
  dicom.textContent = 'DICOM'
  dicom.setAttribute('aria-label', `download ${resultTitle(result)} as DICOM`)
  dicom.onclick = () => download(`/api/download/${result.study}/${result.series}`, `result-${result.sop_instance}.tar`)
    .catch((e) => showError(e.message))
  links.appendChild(dicom)
  if (result.kind === 'ANN' || result.kind === 'SR') {
    const geo = document.createElement('button')
    geo.type = 'button'
    geo.textContent = 'GeoJSON'
    geo.setAttribute('aria-label', `download ${resultTitle(result)} as GeoJSON`)
    geo.onclick = () => download(`/api/slides/${series}/annotations?all=1&instance=${result.sop_instance}`,
      `result-${result.sop_instance}.geojson`, 'application/geo+json').catch((e) => showError(e.message))
    links.appendChild(geo)
  }
  box.onchange = async () => {
    box.disabled = true
    li.dataset.state = 'loading'
    try {
      await overlays.set(result, box.checked)
      li.dataset.state = box.checked ? 'shown' : 'hidden'
    } catch (e) {
      box.checked = false
      li.dataset.state = 'error'
      showError(`overlay ${resultTitle(result)}: ${describeError(e)}`)
    } finally {
      box.disabled = false
    }
  }
  li.append(box, label, links, groups)
  return li
}

async function listResults(overlays, extra = []) {
  const show = new Set([...overlays.visible, ...extra])
  const list = $('slide-results')
  let found
  try {
    found = await getJSON(`/api/slides/${encodeURIComponent(series)}/results`, 'results')
  } catch (e) {
    showError(e.message)
    return
  }
  list.replaceChildren()
  if (!found.results.length) {
    const li = document.createElement('li')
    li.textContent = 'No results on this slide yet.'
    list.appendChild(li)
  }
  for (const result of found.results) {
    const row = resultRow(result, overlays)
    list.appendChild(row)
    if (show.has(result.sop_instance)) {
      const box = row.querySelector('input')
      box.checked = true
      await box.onchange()
    }
  }
  page.results = found.results
}

function annotateTools(annotator, overlays) {
  const bar = $('annotate-tools')
  const save = $('annotate-save')
  const discard = $('annotate-discard')
  const counter = $('annotate-count')
  const update = () => {
    counter.textContent = `${annotator.count} unsaved region${annotator.count === 1 ? '' : 's'}`
    save.disabled = discard.disabled = annotator.count === 0
  }
  annotator.onChange = update
  for (const [name, tool] of Object.entries(TOOLS)) {
    const button = document.createElement('button')
    button.type = 'button'
    button.textContent = tool.label
    button.dataset.tool = name
    button.setAttribute('aria-pressed', 'false')
    button.onclick = () => {
      const active = annotator.use(name)
      for (const b of bar.querySelectorAll('button')) b.setAttribute('aria-pressed', String(b.dataset.tool === active))
    }
    bar.appendChild(button)
  }
  $('annotate-class').oninput = (e) => { annotator.className = e.target.value.trim() || 'Region' }
  discard.onclick = () => annotator.discard()
  save.onclick = async () => {
    save.disabled = true
    status('Saving annotations…', true)
    try {
      const { stored } = await annotator.save()
      page.lastSaved = stored
      status(`Saved as ${stored.sop_instance}`, false)
      await listResults(overlays, [stored.sop_instance])
    } catch (e) {
      status('Save failed', false)
      showError(e.message)
    } finally {
      update()
    }
  }
  update()
}

async function main() {
  if (!series) return // the template shows why (a malformed UID)
  status('Loading slide…', true)
  const container = $('viewer')
  let opened
  try {
    opened = await openSlide(series, container, {
      controls: ['overview', 'position'],
      onFrameError: (error) => {
        page.frameErrors = (page.frameErrors || 0) + 1
        if (page.frameErrors === 1) showError(`Some tiles could not be shown: ${describeError(error)}`)
      },
      onDrawn: () => {
        page.drawCount += 1
        page.lastDrawn = performance.now()
        if (page.firstDrawn === null) {
          page.firstDrawn = page.lastDrawn
          status(page.frameErrors ? 'Slide shown, with tiles missing' : 'Slide shown', false)
        }
      },
    })
  } catch (e) {
    status('The slide cannot be shown', false)
    container.classList.add('failed')
    showError(describeError(e))
    return
  }
  const { viewer, client, images, summary, map } = opened
  page.viewer = viewer
  page.map = map
  showSummary(summary)
  map.on('loadstart', () => status('Loading tiles…', true))
  map.on('loadend', () => status(page.frameErrors ? 'Slide shown, with tiles missing' : 'Slide shown', false))
  installKeys(container, map)
  const overlays = new Overlays(viewer, client, series)
  page.overlays = overlays
  const level0 = images.filter((i) => i.ImageType[2] === 'VOLUME')
    .reduce((a, b) => (b.TotalPixelMatrixColumns > a.TotalPixelMatrixColumns ? b : a))
  const annotator = new Annotator({ viewer, container, series, level0 })
  page.annotator = annotator
  annotateTools(annotator, overlays)
  await listResults(overlays)
}

main()
