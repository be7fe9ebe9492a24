// Drawing regions on the slide and saving them as a Microscopy Bulk Simple Annotations
// instance through the results API (POST /api/slides/{series}/annotations, GeoJSON in
// level-0 pixel coordinates, the inverse of the viewer's own 2D mapping).

import { dmv, getJSON, sendJSON } from './common.js'

export const TOOLS = {
  point: { geometryType: 'point', label: 'Point' },
  line: { geometryType: 'line', label: 'Line' },
  polygon: { geometryType: 'polygon', label: 'Polygon' },
  rectangle: { geometryType: 'box', label: 'Rectangle' },
  freehand: { geometryType: 'freehandpolygon', label: 'Freehand' },
}

/** Slide coordinates (mm) -> (column, row) of level 0, (0, 0) the top-left pixel's corner. */
export function pixelMapper(level0) {
  const lib = dmv()
  const origin = level0.TotalPixelMatrixOriginSequence[0]
  const spacing = level0.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
  const inverse = lib.utils.buildInverseTransform({
    offset: [Number(origin.XOffsetInSlideCoordinateSystem), Number(origin.YOffsetInSlideCoordinateSystem)],
    orientation: level0.ImageOrientationSlide.map(Number),
    spacing: spacing.map(Number),
  })
  return (xyz) => lib.utils.applyInverseTransform({ coordinate: [xyz[0], xyz[1]], affine: inverse })
}

/** A drawn ROI as a GeoJSON Feature in level-0 pixels, or null for what cannot be saved. */
export function roiFeature(roi, className, toPixels) {
  const s = roi.scoord3d
  const points = (s.graphicType === 'POINT' ? [s.graphicData] : s.graphicData).map(toPixels)
  let geometry
  if (s.graphicType === 'POINT') {
    geometry = { type: 'Point', coordinates: points[0] }
  } else if (s.graphicType === 'POLYLINE') {
    geometry = { type: 'LineString', coordinates: points }
  } else if (s.graphicType === 'POLYGON') {
    const ring = points.slice()
    const [a, b] = [ring[0], ring[ring.length - 1]]
    if (a[0] !== b[0] || a[1] !== b[1]) ring.push(a.slice())
    geometry = { type: 'Polygon', coordinates: [ring] }
  } else {
    return null
  }
  return { type: 'Feature', geometry, properties: { classification: { name: className } } }
}

export class Annotator {
  constructor({ viewer, container, series, level0, onChange }) {
    this.viewer = viewer
    this.series = series
    this.toPixels = pixelMapper(level0)
    this.drawn = new Map() // ROI uid -> class name
    this.onChange = onChange || (() => {})
    this.tool = null
    this.className = 'Region'
    container.addEventListener(dmv().events.EVENTS.ROI_DRAWN, (event) => {
      const roi = event.detail.payload
      this.drawn.set(roi.uid, this.className)
      this.onChange()
    })
  }

  use(tool) {
    if (this.tool === tool || tool === null) {
      this.viewer.deactivateDrawInteraction()
      this.tool = null
      return null
    }
    this.viewer.activateDrawInteraction({ geometryType: TOOLS[tool].geometryType })
    this.tool = tool
    return tool
  }

  get count() {
    return this.drawn.size
  }

  features() {
    const out = []
    for (const roi of this.viewer.getAllROIs()) {
      if (!this.drawn.has(roi.uid)) continue
      const feature = roiFeature(roi, this.drawn.get(roi.uid), this.toPixels)
      if (feature) out.push(feature)
    }
    return out
  }

  discard() {
    for (const uid of this.drawn.keys()) this.viewer.removeROI(uid)
    this.drawn.clear()
    this.onChange()
  }

  /** Store the drawn regions as one instance; the annotator is the logged-in user. */
  async save() {
    const features = this.features()
    if (features.length === 0) throw new Error('nothing to save: draw a region first')
    let annotator = 'Anonymous'
    try {
      const me = await getJSON('/api/whoami', 'who am I')
      if (me && (me.name || me.subject)) annotator = String(me.name || me.subject)
    } catch (_e) {
      // authentication off and no whoami: the page is used anonymously
    }
    const body = { geojson: { type: 'FeatureCollection', features }, annotator: annotator.slice(0, 64) }
    const stored = await sendJSON(`/api/slides/${encodeURIComponent(this.series)}/annotations`, body, 'save')
    this.discard()
    return { stored, features }
  }
}
