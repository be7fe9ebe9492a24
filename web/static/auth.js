// The logged-in user's bearer token, attached to every request a page makes (the viewer's
// frames included), and the OpenID Connect login that gets it: authorization code with PKCE
// (RFC 7636) in the browser, against the issuer the archive names (its [web] configuration,
// embedded in each page as #web-config). The token lives in sessionStorage: per tab, gone when
// the tab closes, never in a cookie the server would have to guard against CSRF.

const TOKEN = 'slidearchive.token'
const EXPIRES = 'slidearchive.token.expires'
const PENDING = 'slidearchive.login'  // the verifier, state and return address of a login under way
export const CALLBACK_PATH = '/login/callback'

export function webConfig () {
  const node = document.getElementById('web-config')
  return node ? JSON.parse(node.textContent) : { login: null }
}

// The current access token, or null (none, or expired).
export function currentToken () {
  const token = sessionStorage.getItem(TOKEN)
  const expires = Number(sessionStorage.getItem(EXPIRES) || 0)
  if (token && expires && Date.now() >= expires) {
    logout()
    return null
  }
  return token
}

export async function authHeaders () {
  const token = currentToken()
  return token ? { Authorization: `Bearer ${token}` } : {}
}

// fetch() with the user's token; any other headers given are kept.
export async function authFetch (url, options = {}) {
  const headers = Object.assign({}, await authHeaders(), options.headers || {})
  return fetch(url, Object.assign({}, options, { headers }))
}

export function logout () {
  sessionStorage.removeItem(TOKEN)
  sessionStorage.removeItem(EXPIRES)
}

function base64url (bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

function randomString (n = 32) {
  return base64url(crypto.getRandomValues(new Uint8Array(n)))
}

async function discover (issuer) {
  const response = await fetch(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`)
  if (!response.ok) throw new Error(`the login service ${issuer} did not answer its discovery document (HTTP ${response.status})`)
  return response.json()
}

function redirectUri () {
  return `${location.origin}${CALLBACK_PATH}`
}

// Go to the issuer's login page; it comes back to CALLBACK_PATH with a code.
export async function login (returnTo = location.pathname + location.search) {
  const config = webConfig().login
  if (!config) throw new Error('this archive has no login configured')
  if (!window.crypto || !crypto.subtle) throw new Error('logging in needs a secure page (https, or http on this machine)')
  const endpoints = await discover(config.issuer)
  const verifier = randomString(48)
  const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)))
  const state = randomString(16)
  sessionStorage.setItem(PENDING, JSON.stringify({ verifier, state, returnTo, tokenEndpoint: endpoints.token_endpoint }))
  const params = new URLSearchParams({
    response_type: 'code',
    client_id: config.client_id,
    redirect_uri: redirectUri(),
    scope: config.scope,
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256'
  })
  location.assign(`${endpoints.authorization_endpoint}?${params}`)
}

// On CALLBACK_PATH: trade the code for a token (with the verifier), then go back where the user was.
export async function completeLogin () {
  const params = new URLSearchParams(location.search)
  const pending = JSON.parse(sessionStorage.getItem(PENDING) || 'null')
  sessionStorage.removeItem(PENDING)
  if (params.get('error')) throw new Error(`the login service refused: ${params.get('error_description') || params.get('error')}`)
  if (!pending || params.get('state') !== pending.state) throw new Error('this login answer does not belong to a login started here; log in again')
  const config = webConfig().login
  const response = await fetch(pending.tokenEndpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code: params.get('code') || '',
      redirect_uri: redirectUri(),
      client_id: config.client_id,
      code_verifier: pending.verifier
    })
  }).catch(() => {
    // an issuer's error answers often lack CORS headers, so the browser shows no reason
    throw new Error('the login service refused the code or could not be reached; log in again')
  })
  const body = await response.json().catch(() => ({}))
  if (!response.ok || !body.access_token) {
    throw new Error(`the login service did not give a token: ${body.error_description || body.error || `HTTP ${response.status}`}`)
  }
  sessionStorage.setItem(TOKEN, body.access_token)
  if (body.expires_in) sessionStorage.setItem(EXPIRES, String(Date.now() + 1000 * Number(body.expires_in)))
  return pending.returnTo && pending.returnTo.startsWith('/') && !pending.returnTo.startsWith('//') ? pending.returnTo : '/'
}
