// What every page shares: errors said in words in the header's alert region (the page keeps
// working), and a visible loading state while requests are in flight.

const errors = () => document.getElementById('page-errors')

export function showError (message) {
  const region = errors()
  if (!region) return
  const p = document.createElement('p')
  p.textContent = message
  region.append(p)
}

export function clearErrors () {
  const region = errors()
  if (region) region.replaceChildren()
}

let busy = 0
export function loading (on) {
  busy = Math.max(0, busy + (on ? 1 : -1))
  const indicator = document.getElementById('page-loading')
  if (indicator) indicator.hidden = busy === 0
}

// The message of an archive error response ({"message"} or the search API's {"error"}), else its status.
export async function errorText (response) {
  let detail = ''
  try {
    const body = await response.json()
    detail = body.message || body.error || ''
  } catch (e) { /* not JSON: the status says it */ }
  return detail ? `${detail} (HTTP ${response.status})` : `HTTP ${response.status} ${response.statusText}`
}
