// Two or more slides side by side; panning or zooming one moves the others to the same
// place (same centre in millimetres relative to each slide's own origin, same resolution).

import { describeError, openSlide } from './common.js'
import { installKeys } from './keys.js'

const page = (window.comparePage = { viewers: [], drawn: 0, errors: [] })

function link(maps) {
  let syncing = false
  for (const source of maps) {
    const view = source.getView()
    const follow = () => {
      if (syncing) return
      syncing = true
      for (const target of maps) {
        if (target === source) continue
        const other = target.getView()
        other.setResolution(view.getResolution())
        other.setCenter(view.getCenter())
        other.setRotation(view.getRotation())
      }
      syncing = false
    }
    view.on('change:center', follow)
    view.on('change:resolution', follow)
  }
}

async function main() {
  const panes = [...document.querySelectorAll('.compare-pane')]
  const opened = await Promise.all(panes.map(async (pane) => {
    const container = pane.querySelector('.viewer')
    const status = pane.querySelector('.pane-status')
    status.textContent = 'Loading slide…'
    try {
      const slide = await openSlide(pane.dataset.series, container, {
        controls: [],
        onDrawn: () => {
          page.drawn += 1
          status.textContent = 'Slide shown'
        },
        onFrameError: (e) => { status.textContent = `Some tiles could not be shown: ${describeError(e)}` },
      })
      pane.querySelector('.pane-title').textContent =
        [slide.summary.specimen.stains, slide.summary.description, pane.dataset.series].filter(Boolean)[0]
      installKeys(container, slide.map)
      return slide
    } catch (e) {
      page.errors.push(describeError(e))
      status.textContent = `This slide cannot be shown: ${describeError(e)}`
      container.classList.add('failed')
      return null
    }
  }))
  const maps = opened.filter(Boolean).map((o) => o.map)
  page.viewers = opened.filter(Boolean).map((o) => o.viewer)
  page.maps = maps
  link(maps)
  page.linked = true
}

main()
