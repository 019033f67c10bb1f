// The image-cache status page: polls v2/status (relative to the page, so it works behind a path prefix)
// every POLL_MS after the previous answer, and renders it with textContent only (no HTML from data).
// Plain browser JavaScript, no build step. When the management API needs a token (401), it asks for one
// and keeps it in sessionStorage (this tab only), sending it as `Authorization: Bearer <token>`.
'use strict';

(() => {
  const POLL_MS = 2000;
  const TOKEN_KEY = 'image-cache-status-token';
  const $ = (id) => document.getElementById(id);
  let timer;

  /** Bytes in binary units, as given: 450 MiB stays "450 MiB" (one decimal at most, none when whole). */
  function formatBytes(bytes) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${unit === 0 ? value : Number(value.toFixed(1))} ${units[unit]}`;
  }

  function formatPercent(ratio) {
    return `${(ratio * 100).toFixed(1)}%`;
  }

  function formatTime(epochSeconds) {
    return new Date(epochSeconds * 1000).toISOString().slice(0, 19).replace('T', ' ');
  }

  function formatDuration(seconds) {
    const d = Math.floor(seconds / 86400);
    const h = Math.floor((seconds % 86400) / 3600);
    const m = Math.floor((seconds % 3600) / 60);
    return d > 0 ? `${d}d ${h}h` : h > 0 ? `${h}h ${m}m` : `${m}m ${seconds % 60}s`;
  }

  function cell(text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function setState(state) {
    document.body.dataset.state = state;
    $('login').hidden = state !== 'login';
    $('content').hidden = state !== 'ok' && state !== 'stale';
  }

  function render(report) {
    const { node, cache, requests, topImages, fills, cluster } = report;
    $('node').textContent = `${node.nodeId ?? 'this node'} · driver ${node.driver} · pid ${node.pid} · up ${formatDuration(node.uptimeSeconds)}`;

    const size = $('size');
    size.textContent = `${formatBytes(cache.bytes)} of ${formatBytes(cache.maxBytes)}`;
    size.dataset.bytes = String(cache.bytes);
    size.dataset.maxBytes = String(cache.maxBytes);
    $('size-bar').max = Math.max(cache.maxBytes, 1);
    $('size-bar').value = Math.min(cache.bytes, cache.maxBytes);
    $('size-detail').textContent =
      cache.maxBytes > 0 ? `${formatPercent(cache.bytes / cache.maxBytes)} of the budget prune enforces` : 'no budget';

    const ratio = $('hit-ratio');
    ratio.textContent = requests.hitRatio === null ? '–' : formatPercent(requests.hitRatio);
    ratio.dataset.hits = String(requests.hits);
    ratio.dataset.misses = String(requests.misses);
    $('hit-detail').textContent =
      `${requests.hits} hits, ${requests.misses} misses since start · served ${formatBytes(requests.servedBytes.cache)} from the cache, ${formatBytes(requests.servedBytes.origin)} from the origin`;

    $('images').textContent = String(cache.images);
    $('images').dataset.count = String(cache.images);
    $('queued').textContent = `${cache.queued} queued for prefetch`;

    renderSpace(report.space);

    const list = $('fills');
    list.replaceChildren(
      ...fills.map((fill) => {
        const li = document.createElement('li');
        li.dataset.id = fill.id;
        li.dataset.written = String(fill.written);
        const id = document.createElement('span');
        id.className = 'id';
        id.textContent = fill.id;
        const bar = document.createElement('progress');
        bar.setAttribute('aria-label', `download of ${fill.id}`);
        const text = document.createElement('span');
        text.className = 'num';
        if (fill.expectedSize === null) {
          // Indeterminate (no value): the origin has not said how long the image is.
          text.textContent = `${formatBytes(fill.written)} of unknown size`;
        } else {
          li.dataset.expected = String(fill.expectedSize);
          bar.max = Math.max(fill.expectedSize, 1);
          bar.value = fill.written;
          text.textContent = `${formatBytes(fill.written)} of ${formatBytes(fill.expectedSize)} (${formatPercent(fill.expectedSize === 0 ? 1 : fill.written / fill.expectedSize)})`;
        }
        text.textContent += ` · ${fill.role} · ${fill.readers} reader${fill.readers === 1 ? '' : 's'}`;
        li.append(id, bar, text);
        return li;
      }),
    );
    $('no-fills').hidden = fills.length > 0;

    const top = $('top-images');
    top.tBodies[0].replaceChildren(
      ...topImages.map((image) => {
        const tr = document.createElement('tr');
        tr.dataset.id = image.id;
        tr.dataset.hits = String(image.hits);
        tr.append(cell(image.id, 'id'), cell(String(image.hits), 'num'), cell(formatBytes(image.size), 'num'), cell(formatTime(image.lastAccessed)));
        return tr;
      }),
    );
    top.hidden = topImages.length === 0;
    $('no-images').hidden = topImages.length > 0;

    // The cluster section: only when the server's driver (or cluster layer) lists nodes.
    const nodes = $('nodes');
    $('cluster-none').hidden = cluster !== null;
    $('cluster-error').hidden = cluster === null || cluster.error === null;
    if (cluster !== null && cluster.error !== null) $('cluster-error').textContent = `The cluster's nodes could not be listed: ${cluster.error.message} (${cluster.error.code})`;
    nodes.hidden = cluster === null || cluster.nodes.length === 0;
    nodes.tBodies[0].replaceChildren(
      ...(cluster?.nodes ?? []).map((n) => {
        const tr = document.createElement('tr');
        tr.dataset.id = n.id;
        tr.dataset.health = n.health;
        tr.append(
          cell(n.self ? `${n.id} (this node)` : n.id, 'id'),
          cell(n.health, `health-${n.health}`),
          cell(n.url ?? '–'),
          cell(n.images === null ? '–' : String(n.images), 'num'),
          cell(n.bytes === null ? '–' : formatBytes(n.bytes), 'num'),
          cell(n.lastSeen === null ? '–' : formatTime(n.lastSeen)),
        );
        return tr;
      }),
    );

    document.body.dataset.generatedAt = report.generatedAt;
    $('updated').textContent = `updated ${report.generatedAt.slice(11, 19)} UTC`;
  }

  /** The space policy: the budget by part, free space on the filesystem, the thresholds and the watcher's state. */
  function renderSpace(space) {
    $('space-none').hidden = space !== null;
    $('space').hidden = space === null;
    if (space === null) return;
    const used = $('space-used');
    used.textContent = `${formatBytes(space.usedBytes)} of ${formatBytes(space.maxBytes)}`;
    used.dataset.usedBytes = String(space.usedBytes);
    used.dataset.maxBytes = String(space.maxBytes);
    $('space-bar').max = Math.max(space.maxBytes, 1);
    $('space-bar').value = Math.min(space.usedBytes, space.maxBytes);
    for (const row of $('space-parts').tBodies[0].rows) {
      const bytes = space.parts[row.dataset.part];
      row.dataset.bytes = String(bytes);
      row.cells[1].textContent = formatBytes(bytes);
    }
    $('space-budget-mode').textContent = space.writeBudget
      ? 'held on the write path: every write reserves its space first'
      : 'enforced by prune only';
    const free = $('space-free');
    free.textContent = `${formatBytes(space.disk.freeBytes)} free of ${formatBytes(space.disk.totalBytes)}`;
    free.dataset.freeBytes = String(space.disk.freeBytes);
    free.dataset.totalBytes = String(space.disk.totalBytes);
    $('space-files').textContent = `${space.disk.freeFiles} of ${space.disk.totalFiles} inodes free`;
    const state = $('space-state');
    state.dataset.state = space.state;
    state.textContent = {
      ok: 'watcher: ok',
      culling: 'watcher: culling (free space below cull: evicting until run)',
      stopped: 'watcher: stopped (free space below stop: nothing new is cached)',
    }[space.state] ?? `watcher: ${space.state}`;
    const thresholds = $('space-thresholds');
    thresholds.hidden = space.thresholds === null;
    $('space-no-thresholds').hidden = space.thresholds !== null;
    for (const row of thresholds.tBodies[0].rows) {
      const threshold = space.thresholds?.[row.dataset.threshold];
      row.dataset.bytes = threshold === undefined ? '' : String(threshold.bytes);
      row.cells[1].textContent =
        threshold === undefined ? '–' : `${formatBytes(threshold.bytes)}${threshold.files === null ? '' : ` · ${threshold.files} inodes`}`;
    }
  }

  async function poll() {
    clearTimeout(timer);
    const token = sessionStorage.getItem(TOKEN_KEY);
    try {
      const response = await fetch('v2/status', {
        headers: token === null ? {} : { authorization: `Bearer ${token}` },
        cache: 'no-store',
      });
      if (response.status === 401) {
        // Asked for a token (or the one given was refused): stop polling until one is entered.
        if (token !== null) sessionStorage.removeItem(TOKEN_KEY);
        $('login-error').textContent = token === null ? '' : 'That token was refused.';
        $('updated').textContent = 'needs a token';
        setState('login');
        $('token').focus();
        return;
      }
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error(`${response.status} ${body.code ?? ''} ${body.message ?? ''}`.trim());
      }
      render(await response.json());
      $('error').hidden = true;
      setState('ok');
    } catch (error) {
      $('error').textContent = `Could not read the status (${error.message}); retrying.`;
      $('error').hidden = false;
      if (document.body.dataset.state === 'ok') setState('stale');
      else if (document.body.dataset.state === 'loading') setState('error');
    }
    timer = setTimeout(poll, POLL_MS);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login').addEventListener('submit', (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
      $('token').value = '';
      void poll();
    });
    void poll();
  });
})();
