// Started before dicom-microscopy-viewer's bundle is evaluated (an async module; the bundle is
// deferred): the slide summary and the series metadata download while the library loads.

import { getJSON, headers } from './common.js'

async function seriesMetadata(summaryPromise, series) {
  const summary = await summaryPromise
  const url = `/dicomweb/studies/${summary.study}/series/${series}/metadata`
  const response = await fetch(url, { headers: await headers({ Accept: 'application/dicom+json' }) })
  if (!response.ok) throw new Error(`slide metadata could not be read: ${response.status} ${response.statusText}`)
  return response.json()
}

const series = document.body.dataset.series
if (series) {
  const summary = getJSON(`/api/slides/${encodeURIComponent(series)}`, 'slide')
  const metadata = seriesMetadata(summary, series)
  summary.catch(() => {}) // awaited (and reported) by the page; not an unhandled rejection here
  metadata.catch(() => {})
  window.slidePrefetch = { series, summary, metadata }
}
