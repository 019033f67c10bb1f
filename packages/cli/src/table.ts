import Table from 'cli-table3';

/** Renders rows as a plain (uncoloured) text table with a header row. */
export function renderTable(head: readonly string[], rows: readonly (readonly (string | number)[])[], align?: readonly ('left' | 'right')[]): string {
  const table = new Table({
    head: [...head],
    style: { head: [], border: [], compact: true },
    ...(align === undefined ? {} : { colAligns: [...align] }),
  });
  for (const row of rows) table.push([...row]);
  return table.toString();
}
