// Public surface of the memsched Node client.
export * from './client';
export * from './errors';
