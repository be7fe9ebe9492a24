// The bearer token of the logged-in user, for every request a page makes (the viewer's
// frames included). The login flow stores it in sessionStorage under "slidearchive.token".
export async function authHeaders() {
  const token = sessionStorage.getItem('slidearchive.token')
  return token ? { Authorization: `Bearer ${token}` } : {}
}
