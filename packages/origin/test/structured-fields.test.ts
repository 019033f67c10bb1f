import { describe, expect, it } from 'vitest';
import { parseDictionary } from '../src/structured-fields.js';

describe('parseDictionary (RFC 8941, as Repr-Digest needs it)', () => {
  it('byte sequences, with parameters and optional whitespace', () => {
    const parsed = parseDictionary('sha-256=:AAEC:;x=1,  sha-512=:/w==:\t, md5=:AA==:');
    expect([...(parsed?.keys() ?? [])]).toEqual(['sha-256', 'sha-512', 'md5']);
    expect(parsed?.get('sha-256')).toEqual(Buffer.from([0, 1, 2]));
    expect(parsed?.get('sha-512')).toEqual(Buffer.from([255]));
  });

  it('other item types, inner lists, booleans without a value, the last of duplicate keys', () => {
    const parsed = parseDictionary('a=1, b="x, \\"y\\"", c=tok/en, d=?0, e, f=(1 "two");p, a=2.5');
    expect(parsed?.get('a')).toBe(2.5);
    expect(parsed?.get('b')).toBe('x, "y"');
    expect(parsed?.get('c')).toEqual({ token: 'tok/en' });
    expect(parsed?.get('d')).toBe(false);
    expect(parsed?.get('e')).toBe(true);
    expect(parsed?.get('f')).toEqual([1, 'two']);
  });

  it('an empty value is an empty dictionary', () => {
    expect(parsed('')).toEqual([]);
    expect(parsed('   ')).toEqual([]);
  });

  it('anything malformed invalidates the whole field', () => {
    for (const bad of ['sha-256=:AAEC:,', 'Sha-256=:AAEC:', 'sha-256=:AA EC:', 'a=1 b=2', 'a="unterminated', 'a=(1 2', '=1', 'a=?2']) {
      expect(parseDictionary(bad), bad).toBeUndefined();
    }
  });
});

function parsed(value: string): string[] | undefined {
  const dictionary = parseDictionary(value);
  return dictionary === undefined ? undefined : [...dictionary.keys()];
}
