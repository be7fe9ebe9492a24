// Shared by the slide and compare pages: credentials, JSON calls with readable errors,
// and building a dicom-microscopy-viewer VolumeImageViewer for one slide series.
// dicom-microscopy-viewer (window.dicomMicroscopyViewer) and dicomweb-client
// (window.DICOMwebClient) are loaded as classic scripts after PUBLIC_LIB_URL is set.

import { authHeaders } from '../auth.js'

export const dmv = () => window.dicomMicroscopyViewer

/** Headers for every request to the archive: the bearer token when logged in. */
export async function headers(extra = {}) {
  return Object.assign({}, await authHeaders(), extra)
}

/** A readable message from an archive error answer ({status, error, message}) or a network failure. */
async function problem(response, what) {
  let message = `${response.status} ${response.statusText}`
  try {
    const body = await response.json()
    if (body && body.message) message = body.message
  } catch (_e) {
    // not JSON: keep the status line
  }
  const error = new Error(`${what}: ${message}`)
  error.status = response.status
  return error
}

export async function getJSON(url, what) {
  let response
  try {
    response = await fetch(url, { headers: await headers({ Accept: 'application/json' }) })
  } catch (e) {
    throw new Error(`${what}: the archive did not answer (${e.message})`)
  }
  if (!response.ok) throw await problem(response, what)
  return response.json()
}

export async function sendJSON(url, body, what) {
  let response
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: await headers({ 'Content-Type': 'application/json', Accept: 'application/json' }),
      body: JSON.stringify(body),
    })
  } catch (e) {
    throw new Error(`${what}: the archive did not answer (${e.message})`)
  }
  if (!response.ok) throw await problem(response, what)
  return response.json()
}

/** Fetch with the token and hand the body to the browser as a file. */
export async function download(url, filename, accept) {
  const response = await fetch(url, { headers: await headers(accept ? { Accept: accept } : {}) })
  if (!response.ok) throw await problem(response, `download of ${filename}`)
  const blob = await response.blob()
  const link = document.createElement('a')
  link.href = URL.createObjectURL(blob)
  link.download = filename
  document.body.appendChild(link)
  link.click()
  link.remove()
  setTimeout(() => URL.revokeObjectURL(link.href), 60000)
}

export async function dicomwebClient() {
  return new window.DICOMwebClient.api.DICOMwebClient({
    url: `${window.location.origin}/dicomweb`,
    headers: await headers(),
  })
}

/** Human words for a DICOM flavour of failure, so the canvas is never silently blank. */
export function describeError(error) {
  const text = (error && (error.message || String(error))) || 'unknown error'
  if (error && error.status === 404) return text
  if (/decod/i.test(text)) return `a tile could not be decoded: ${text}`
  return text
}

const decodeListeners = new Set()

// A frame the worker cannot decode rejects a promise nobody awaits inside the library: no
// tile error event, just an unhandled rejection and a tile that never appears. Turn it into
// the page's frame error so the page says what went wrong.
function undecodable(event, reason) {
  const text = (reason && (reason.message || String(reason))) || ''
  if (!/decode frame/i.test(text)) return
  event.preventDefault()
  for (const listener of decodeListeners) listener(new Error(`a tile could not be decoded (${text})`))
}
window.addEventListener('unhandledrejection', (event) => undecodable(event, event.reason))
window.addEventListener('error', (event) => undecodable(event, event.error || event.message))

/**
 * dicom-microscopy-viewer 0.48 draws bulk POINT groups on a WebGL layer with hit detection
 * disabled, then hit-tests every layer on each pointer move, which OpenLayers refuses with an
 * exception (an uncaught error per mouse move once a point overlay is on). Such a layer has
 * no features to find: answer "none" instead of throwing.
 */
function tolerateHitDetection(map) {
  for (const name of ['getFeaturesAtPixel', 'forEachFeatureAtPixel']) {
    const original = map[name].bind(map)
    map[name] = (...args) => {
      try {
        return original(...args)
      } catch (e) {
        if (!/hit detection/i.test(e.message)) throw e
        return name === 'getFeaturesAtPixel' ? [] : undefined
      }
    }
  }
}

/**
 * A frame whose decoding fails inside the library's worker is never settled: no error event,
 * the tile just never appears. Frames pending for longer than ``patience`` ms are reported
 * (once) so the page says so instead of waiting forever.
 */
function watchFrames(container, events, onFrameError, patience = 10000) {
  const pending = new Map()
  const key = (d) => `${d.sopInstanceUID}/${d.frameNumber}/${d.channelIdentifier}`
  container.addEventListener(events.FRAME_LOADING_STARTED, (e) => pending.set(key(e.detail.payload), Date.now()))
  container.addEventListener(events.FRAME_LOADING_ENDED, (e) => pending.delete(key(e.detail.payload)))
  let reported = false
  const timer = setInterval(() => {
    const now = Date.now()
    const stuck = [...pending.values()].filter((t) => now - t > patience).length
    if (stuck && !reported && onFrameError) {
      reported = true
      onFrameError(new Error(`${stuck} tile${stuck === 1 ? '' : 's'} did not arrive or could not be decoded`))
    }
    if (!container.isConnected) clearInterval(timer)
  }, 1000)
}

/**
 * Build and render a viewer for one slide series into ``container``.
 * Resolves to {viewer, client, images, summary} once the viewer is rendered; rejects with a
 * readable error (slide gone, no pyramid, metadata unreadable).
 */
export async function openSlide(series, container, { onFrameError, onDrawn, controls = ['overview'] } = {}) {
  const early = window.slidePrefetch && window.slidePrefetch.series === series ? window.slidePrefetch : null
  const summary = await (early ? early.summary : getJSON(`/api/slides/${encodeURIComponent(series)}`, 'slide'))
  const client = await dicomwebClient()
  let metadata
  try {
    metadata = await (early ? early.metadata : client.retrieveSeriesMetadata({
      studyInstanceUID: summary.study,
      seriesInstanceUID: series,
    }))
  } catch (e) {
    throw new Error(`slide metadata could not be read: ${e.message || e}`)
  }
  const images = []
  for (const item of metadata) {
    let image
    try {
      image = new (dmv().metadata.VLWholeSlideMicroscopyImage)({ metadata: item })
    } catch (_e) {
      continue // another SOP class in the series
    }
    const flavour = image.ImageType && image.ImageType[2]
    if (flavour === 'VOLUME' || flavour === 'THUMBNAIL') images.push(image)
  }
  if (images.length === 0) {
    throw new Error('this series has no pyramid: no VL Whole Slide Microscopy VOLUME images')
  }
  const errors = []
  const viewer = new (dmv().viewer.VolumeImageViewer)({
    client,
    metadata: images,
    controls,
    errorInterceptor: (error) => {
      errors.push(error)
      if (onFrameError) onFrameError(error)
      return error
    },
  })
  viewer.render({ container })
  const map = viewer.getMap()
  tolerateHitDetection(map)
  if (onFrameError) decodeListeners.add(onFrameError)
  const events = dmv().events.EVENTS
  container.addEventListener(events.FRAME_LOADING_ERROR, (event) => {
    if (onFrameError) onFrameError(new Error('a tile could not be loaded or decoded'), event)
  })
  watchFrames(container, events, onFrameError)
  if (onDrawn) map.on('rendercomplete', () => onDrawn(map))
  return { viewer, client, images, summary, map, errors }
}
