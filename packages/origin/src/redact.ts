/**
 * A URL as it may be shown to people (startup lines, logs, files others can
 * read): without the credentials of its user-info part and without the values
 * of its query parameters (signed URLs carry tokens there), keeping the
 * parameters that hold the `{id}` placeholder, e.g.
 * `https://user:secret@host/get?id={id}&sig=abc` → `https://host/get?id={id}&sig=…`.
 * Text that is not a URL with a scheme is returned unchanged.
 */
export function redactUrl(text: string): string {
  const withoutUser = text.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/?#@\s]*@/i, '$1');
  const query = withoutUser.indexOf('?');
  if (query < 0 || !/^[a-z][a-z0-9+.-]*:\/\//i.test(withoutUser)) return withoutUser;
  const hash = withoutUser.indexOf('#', query);
  const end = hash < 0 ? withoutUser.length : hash;
  const params = withoutUser
    .slice(query + 1, end)
    .split('&')
    .map((param) => {
      const eq = param.indexOf('=');
      if (eq < 0 || param.slice(eq + 1).includes('{id}')) return param;
      return `${param.slice(0, eq)}=…`;
    });
  return `${withoutUser.slice(0, query)}?${params.join('&')}`;
}
