import { lookup } from 'node:dns/promises';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { InvalidArgumentError } from '@cache/core';
import { isLoopbackAddress } from './auth.js';

/**
 * True when `host` is an address of this machine only: a loopback literal,
 * `localhost`, or a name every address of which is loopback. A name that does
 * not resolve is not (listening on it fails anyway).
 */
export async function isLoopbackHost(host: string): Promise<boolean> {
  if (isLoopbackAddress(host)) return true;
  if (/^[\d.]+$/.test(host) || host.includes(':')) return false; // another address literal
  try {
    const addresses = await lookup(host, { all: true });
    return addresses.length > 0 && addresses.every((entry) => isLoopbackAddress(entry.address));
  } catch {
    return false;
  }
}

/**
 * Refuses (`InvalidArgumentError`) to listen on an address other hosts can
 * reach while the management API has no token, unless the caller insists
 * with `insecureOpenManagementApi`: an open `/v2` lets anyone delete the cache.
 */
export async function assertListenAllowed(host: string, options: { token: string | undefined; insecureOpenManagementApi: boolean }): Promise<void> {
  if (options.token !== undefined || options.insecureOpenManagementApi) return;
  if (await isLoopbackHost(host)) return;
  throw new InvalidArgumentError(
    `refusing to listen on ${host}: without a token the management API (/v2: delete, prune, queue) would be open to ` +
      'every host that can reach this address. Set a token (options.token), listen on 127.0.0.1, or, on a network you trust, ' +
      'set options.insecureOpenManagementApi to true',
  );
}

/** The URL of the address `server` is bound to (`http://0.0.0.0:8080`, `https://[::]:8080`), as opposed to a guess. */
export function boundUrl(server: Server, protocol: 'http' | 'https' = 'http'): string {
  const address = server.address() as AddressInfo | string | null;
  if (address === null || typeof address === 'string') throw new Error(`the server is not listening on a TCP port (${String(address)})`);
  const host = address.family === 'IPv6' || address.address.includes(':') ? `[${address.address}]` : address.address;
  return `${protocol}://${host}:${address.port}`;
}
