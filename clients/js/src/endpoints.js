// Relay endpoints of the browser client (see aether.js).

/** `http(s)://host[/path]` or `ws(s)://…` → the `/v1/ws` URL under it. */
export function socketUrl(base) {
  const u = new URL(base, typeof location === "undefined" ? undefined : location.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") throw new Error(`not a relay URL: ${base}`);
  if (!u.pathname.endsWith("/v1/ws")) u.pathname = u.pathname.replace(/\/+$/, "") + "/v1/ws";
  u.search = "";
  u.hash = "";
  return u.toString();
}

/** Returns `{urls, cloudUrl}`: socket URLs in order, and the endpoint-list URL to refresh them from. */
export function parseRelays(relays) {
  if (typeof relays === "string") {
    if (/\/v1\/clouds\/[^/]+\/?$/.test(relays)) return { urls: [], cloudUrl: relays };
    return { urls: [socketUrl(relays)], cloudUrl: null };
  }
  const list = Array.isArray(relays) ? relays : relays && Array.isArray(relays.endpoints) ? relays.endpoints : null;
  if (!list || list.length === 0) throw new TypeError("Aether: relays must be a URL, a non-empty list of URLs, or {endpoints: [...]}");
  return { urls: list.map((e) => socketUrl(typeof e === "string" ? e : e.url)), cloudUrl: null };
}
