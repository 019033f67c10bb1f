/**
 * Just enough of RFC 8941 (Structured Field Values for HTTP) to read a
 * dictionary such as `Repr-Digest: sha-256=:<base64>:, sha-512=:<base64>:`.
 * Parameters are parsed and dropped; inner lists are parsed and kept as arrays.
 */

/** A bare item: byte sequence, string, token (as `{ token }`), number or boolean; an inner list is an array. */
export type StructuredItem = Buffer | string | { token: string } | number | boolean | StructuredItem[];

class ParseError extends Error {}

/**
 * Parses a dictionary field value. Returns `undefined` when it does not
 * parse: RFC 8941 section 4.2 says to ignore the whole field then. A key seen
 * twice keeps its last value.
 */
export function parseDictionary(input: string): Map<string, StructuredItem> | undefined {
  const parser = new Parser(input);
  try {
    return parser.dictionary();
  } catch (error) {
    if (error instanceof ParseError) return undefined;
    throw error;
  }
}

class Parser {
  #i = 0;
  constructor(readonly s: string) {}

  #fail(): never {
    throw new ParseError();
  }

  #peek(): string | undefined {
    return this.s[this.#i];
  }

  #skip(chars: string): void {
    while (this.#i < this.s.length && chars.includes(this.s[this.#i] as string)) this.#i++;
  }

  dictionary(): Map<string, StructuredItem> {
    const out = new Map<string, StructuredItem>();
    this.#skip(' ');
    if (this.#i >= this.s.length) return out;
    for (;;) {
      const key = this.#key();
      let value: StructuredItem = true;
      if (this.#peek() === '=') {
        this.#i++;
        value = this.#peek() === '(' ? this.#innerList() : this.#bareItem();
      }
      this.#parameters();
      out.set(key, value);
      this.#skip(' \t');
      if (this.#i >= this.s.length) return out;
      if (this.#peek() !== ',') this.#fail();
      this.#i++;
      this.#skip(' \t');
      if (this.#i >= this.s.length) this.#fail(); // a trailing comma
    }
  }

  #key(): string {
    const match = /^[a-z*][a-z0-9_\-.*]*/.exec(this.s.slice(this.#i));
    if (match === null) this.#fail();
    this.#i += match[0].length;
    return match[0];
  }

  #parameters(): void {
    while (this.#peek() === ';') {
      this.#i++;
      this.#skip(' ');
      this.#key();
      if (this.#peek() === '=') {
        this.#i++;
        this.#bareItem();
      }
    }
  }

  #innerList(): StructuredItem[] {
    this.#i++; // (
    const items: StructuredItem[] = [];
    for (;;) {
      this.#skip(' ');
      if (this.#peek() === ')') {
        this.#i++;
        this.#parameters();
        return items;
      }
      items.push(this.#bareItem());
      this.#parameters();
      const next = this.#peek();
      if (next !== ' ' && next !== ')') this.#fail();
    }
  }

  #bareItem(): StructuredItem {
    const rest = this.s.slice(this.#i);
    const c = rest[0];
    let match: RegExpExecArray | null;
    if (c === ':') {
      match = /^:([A-Za-z0-9+/=]*):/.exec(rest);
      if (match === null) this.#fail();
      this.#i += match[0].length;
      return Buffer.from(match[1] as string, 'base64');
    }
    if (c === '"') {
      match = /^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"/.exec(rest);
      if (match === null) this.#fail();
      this.#i += match[0].length;
      return (match[1] as string).replace(/\\(["\\])/g, '$1');
    }
    if (c === '?') {
      match = /^\?([01])/.exec(rest);
      if (match === null) this.#fail();
      this.#i += 2;
      return match[1] === '1';
    }
    match = /^-?\d{1,15}(?:\.\d{1,3})?/.exec(rest);
    if (match !== null) {
      this.#i += match[0].length;
      return Number(match[0]);
    }
    match = /^[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*/.exec(rest);
    if (match === null) this.#fail();
    this.#i += match[0].length;
    return { token: match[0] };
  }
}
