// The header's login state: who is logged in and a Log in / Log out button, when the archive
// has an OpenID Connect login configured; on the callback page, the end of the login.
import { CALLBACK_PATH, authFetch, completeLogin, currentToken, login, logout, webConfig } from './auth.js'
import { showError } from './page.js'

function button (label, onClick) {
  const b = document.createElement('button')
  b.type = 'button'
  b.textContent = label
  b.addEventListener('click', onClick)
  return b
}

async function whoami () {
  const response = await authFetch('/api/whoami')
  return response.ok ? response.json() : null
}

async function drawStatus () {
  const box = document.getElementById('auth-status')
  if (!box || !webConfig().login) return
  const token = currentToken()
  const me = token ? await whoami() : null
  const text = document.createElement('span')
  if (me) {
    const prefix = `${webConfig().login.issuer}#`  // the archive names OIDC subjects issuer#sub
    text.textContent = `Logged in as ${me.subject.startsWith(prefix) ? me.subject.slice(prefix.length) : me.subject}`
    box.replaceChildren(text, button('Log out', () => { logout(); location.reload() }))
  } else {
    if (token) logout()  // a token the archive no longer takes (expired, revoked)
    text.textContent = 'Not logged in'
    box.replaceChildren(text, button('Log in', () => login().catch(e => showError(`Login failed: ${e.message}`))))
  }
}

if (location.pathname === CALLBACK_PATH) {
  completeLogin().then(back => location.replace(back)).catch(e => showError(`Login failed: ${e.message}`))
} else {
  drawStatus().catch(e => showError(`Could not check the login: ${e.message}`))
}
