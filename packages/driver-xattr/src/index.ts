/**
 * `@cache/driver-xattr`: image-cache metadata in `user.*` extended attributes
 * on the cache files themselves, compatible with Glance's xattr driver.
 *
 * @packageDocumentation
 */
export { ATIME_SLACK_NS, ATTRIBUTE_CACHE_SLACK_NS, XattrDriver, type XattrDriverOptions } from './xattr-driver.js';
export { MAX_ERROR_LENGTH, XATTR } from './xattr-names.js';
