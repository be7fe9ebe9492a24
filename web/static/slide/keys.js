// Keyboard habits of slide viewers on the viewer element: + / - (or PageUp / PageDown) one
// pyramid level in or out, arrows pan by a quarter viewport, 0 or Home shows the whole slide.

export function installKeys(container, map) {
  container.tabIndex = 0
  container.addEventListener('keydown', (event) => {
    const view = map.getView()
    const zoom = view.getZoom()
    const size = map.getSize() || [512, 512]
    const step = view.getResolution() * Math.min(size[0], size[1]) / 4
    const center = view.getCenter()
    const actions = {
      '+': () => view.setZoom(Math.min(zoom + 1, view.getMaxZoom())),
      '=': () => view.setZoom(Math.min(zoom + 1, view.getMaxZoom())),
      PageUp: () => view.setZoom(Math.min(zoom + 1, view.getMaxZoom())),
      '-': () => view.setZoom(Math.max(zoom - 1, view.getMinZoom())),
      PageDown: () => view.setZoom(Math.max(zoom - 1, view.getMinZoom())),
      ArrowLeft: () => view.setCenter([center[0] - step, center[1]]),
      ArrowRight: () => view.setCenter([center[0] + step, center[1]]),
      ArrowUp: () => view.setCenter([center[0], center[1] + step]),
      ArrowDown: () => view.setCenter([center[0], center[1] - step]),
      0: () => view.setZoom(view.getMinZoom()),
      Home: () => view.setZoom(view.getMinZoom()),
    }
    const action = actions[event.key]
    if (action) {
      event.preventDefault()
      action()
    }
  })
}
