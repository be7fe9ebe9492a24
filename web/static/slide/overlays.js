// AI results as overlays on a VolumeImageViewer: bulk annotation groups (coloured by their
// property type), segmentations, and Comprehensive 3D SR regions. Each result is fetched
// (WADO-RS metadata, then its bulk data by the viewer) only when first switched on.

import { dmv } from './common.js'

const PALETTE = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
]

/** The same colour for the same property type on every slide and page. */
export function propertyColour(group) {
  const p = group.property_type || {}
  const key = `${p.scheme || ''}:${p.code || group.label || ''}`
  let hash = 0
  for (const ch of key) hash = (hash * 31 + ch.codePointAt(0)) >>> 0
  return PALETTE[hash % PALETTE.length]
}

export function resultTitle(result) {
  if (result.algorithm) {
    return `${result.algorithm.name}${result.algorithm.version ? ` ${result.algorithm.version}` : ''}`
  }
  return result.creator ? `annotated by ${result.creator.replace(/\^/g, ' ').trim()}` : 'manual annotations'
}

export class Overlays {
  constructor(viewer, client, slideSeries) {
    this.viewer = viewer
    this.client = client
    this.slideSeries = slideSeries
    this.loaded = new Map() // sop_instance -> {kind, uids}
    this.visible = new Set() // sop_instances shown now
  }

  async _metadata(result) {
    const [meta] = await this.client.retrieveInstanceMetadata({
      studyInstanceUID: result.study,
      seriesInstanceUID: result.series,
      sopInstanceUID: result.sop_instance,
    })
    return meta
  }

  async _load(result) {
    const lib = dmv()
    const meta = await this._metadata(result)
    if (result.kind === 'ANN') {
      const ann = new lib.metadata.MicroscopyBulkSimpleAnnotations({ metadata: meta })
      this.viewer.addAnnotationGroups(ann)
      const styles = new Map()
      ann.AnnotationGroupSequence.forEach((item, i) => {
        const group = result.groups[i] || {}
        const own = item.RecommendedDisplayCIELabValue
        styles.set(item.AnnotationGroupUID, own ? {} : { color: propertyColour(group), opacity: 1 })
      })
      return { kind: 'ANN', styles }
    }
    if (result.kind === 'SEG') {
      const seg = new lib.metadata.Segmentation({ metadata: meta })
      this.viewer.addSegments([seg])
      const uids = this.viewer.getAllSegments()
        .filter((s) => s.seriesInstanceUID === result.series || (s.segmentation && s.segmentation.SeriesInstanceUID === result.series))
        .map((s) => s.uid)
      return { kind: 'SEG', uids }
    }
    if (result.kind === 'SR') {
      const uids = []
      const styles = new Map()
      for (const [i, region] of (await reportRegions(meta, this.client)).entries()) {
        const roi = new lib.roi.ROI({
          scoord3d: region.scoord3d,
          properties: { label: region.finding || `ROI ${i + 1}`, result: result.sop_instance },
        })
        const colour = propertyColour({ label: region.finding })
        const style = { stroke: { color: [...colour, 1], width: 2 }, fill: { color: [...colour, 0.15] } }
        this.viewer.addROI(roi, style)
        uids.push(roi.uid)
        styles.set(roi.uid, style)
      }
      return { kind: 'SR', uids, styles }
    }
    throw new Error(`results of kind ${result.kind} cannot be shown`)
  }

  /** Show or hide one result; loads it on first use. */
  async set(result, visible) {
    if (visible) this.visible.add(result.sop_instance)
    else this.visible.delete(result.sop_instance)
    let entry = this.loaded.get(result.sop_instance)
    if (!entry) {
      if (!visible) return
      entry = await this._load(result)
      this.loaded.set(result.sop_instance, entry)
    }
    if (entry.kind === 'ANN') {
      for (const [uid, style] of entry.styles) {
        if (visible) this.viewer.showAnnotationGroup(uid, style)
        else this.viewer.hideAnnotationGroup(uid)
      }
    } else if (entry.kind === 'SEG') {
      for (const uid of entry.uids) {
        if (visible) this.viewer.showSegment(uid)
        else this.viewer.hideSegment(uid)
      }
    } else if (entry.kind === 'SR') {
      for (const uid of entry.uids) {
        const hidden = { stroke: { color: [0, 0, 0, 0], width: 1 }, fill: { color: [0, 0, 0, 0] } }
        this.viewer.setROIStyle(uid, visible ? entry.styles.get(uid) : hidden)
      }
    }
  }
}

// --- Comprehensive 3D SR (TID 1500) regions from DICOM JSON --------------------------------

const tagValue = (item, tag) => (item[tag] && item[tag].Value) || []

function conceptCode(item, tag) {
  const seq = tagValue(item, tag)
  if (!seq.length) return null
  return { value: tagValue(seq[0], '00080100')[0], meaning: tagValue(seq[0], '00080104')[0] }
}

function* walk(items) {
  for (const item of items || []) {
    yield item
    yield* walk(tagValue(item, '0040A730'))
  }
}

/** GraphicData inline, or (over 64 bytes) fetched from its BulkDataURI as float32. */
async function graphicData(region, client) {
  const element = region['00700022'] || {}
  if (element.Value) return element.Value
  if (!element.BulkDataURI) return []
  const [buffer] = await client.retrieveBulkData({ BulkDataURI: element.BulkDataURI })
  return Array.from(new Float32Array(buffer))
}

/** Every SCOORD3D region of a measurement report, as a dicom-microscopy-viewer geometry. */
export async function reportRegions(meta, client) {
  const lib = dmv()
  const regions = []
  for (const group of walk(tagValue(meta, '0040A730'))) {
    const name = conceptCode(group, '0040A043')
    if (!name || name.value !== '125007') continue // Measurement Group
    let finding = null
    let region = null
    for (const child of tagValue(group, '0040A730')) {
      const concept = conceptCode(child, '0040A043')
      if (concept && concept.value === '121071') finding = (conceptCode(child, '0040A168') || {}).meaning
      if (tagValue(child, '0040A040')[0] === 'SCOORD3D') region = child
    }
    if (!region) continue
    const type = tagValue(region, '00700023')[0]
    const data = await graphicData(region, client)
    const frame = tagValue(region, '30060024')[0]
    const points = []
    for (let i = 0; i + 2 < data.length; i += 3) points.push([data[i], data[i + 1], data[i + 2]])
    const make = {
      POINT: () => new lib.scoord3d.Point({ coordinates: points[0], frameOfReferenceUID: frame }),
      MULTIPOINT: () => new lib.scoord3d.Multipoint({ coordinates: points, frameOfReferenceUID: frame }),
      POLYLINE: () => new lib.scoord3d.Polyline({ coordinates: points, frameOfReferenceUID: frame }),
      POLYGON: () => new lib.scoord3d.Polygon({ coordinates: points, frameOfReferenceUID: frame }),
      ELLIPSE: () => new lib.scoord3d.Ellipse({ coordinates: points, frameOfReferenceUID: frame }),
    }[type]
    if (make) regions.push({ finding, scoord3d: make() })
  }
  return regions
}
