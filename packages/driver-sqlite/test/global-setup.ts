// Makes Glance's own cache code runnable once per run (installs python3-glance as root), for the Glance interop tests.
export { default } from '@cache/glance-testing/global-setup';
