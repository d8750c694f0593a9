// Reads the user model of one shape with Prisma Client itself (the Rust-free client,
// engineType = "client", over a driver adapter) and prints each row as JSON. Run by
// scripts/prisma-client-check, which generates the client and writes the rows with clerk-sync;
// not meant to be run alone.
//
//   node scripts/prisma-client-check.mjs CLIENT_DIR pg|sqlite URL EXPECTED_ROWS
//
// CLIENT_DIR is the generated client (its index.js); the adapters are resolved from the npm
// folder in PRISMA_CHECK_MODULES. Exits non-zero on any error Prisma Client raises, on a row
// count other than EXPECTED_ROWS, or on a DateTime field Prisma read as an invalid date.

import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [clientDir, backend, url, expected] = process.argv.slice(2);
if (!clientDir || !['pg', 'sqlite'].includes(backend) || !url || expected === undefined) {
  console.error('usage: prisma-client-check.mjs CLIENT_DIR pg|sqlite URL EXPECTED_ROWS');
  process.exit(2);
}
const modules = process.env.PRISMA_CHECK_MODULES;
if (!modules) {
  console.error('PRISMA_CHECK_MODULES (the npm folder holding the adapters) is not set');
  process.exit(2);
}
const requireThere = createRequire(path.join(modules, 'package.json'));
const load = (name) => import(pathToFileURL(requireThere.resolve(name)).href);

const { PrismaClient } = await import(pathToFileURL(path.resolve(clientDir, 'index.js')).href);
let adapter;
if (backend === 'pg') {
  const { PrismaPg } = await load('@prisma/adapter-pg');
  adapter = new PrismaPg({ connectionString: url });
} else {
  const { PrismaBetterSQLite3 } = await load('@prisma/adapter-better-sqlite3');
  // The adapter's default timestamp format (iso8601), as an application would have it.
  adapter = new PrismaBetterSQLite3({ url });
}

const prisma = new PrismaClient({ adapter });
let failed = false;
try {
  const rows = await prisma.user.findMany({ orderBy: { createdAt: 'asc' } });
  for (const row of rows) {
    console.log(JSON.stringify(row));
    for (const [field, value] of Object.entries(row)) {
      if (value instanceof Date && Number.isNaN(value.getTime())) {
        console.error(`  invalid date in field ${field}`);
        failed = true;
      }
    }
  }
  if (rows.length !== Number(expected)) {
    console.error(`  read ${rows.length} rows, expected ${expected}`);
    failed = true;
  }
  // A filter on a DateTime column: Prisma compares it in the database (on SQLite, as text in
  // the adapter's format), so a row written in another format would be missed here.
  const since = await prisma.user.count({ where: { createdAt: { gte: new Date(0) } } });
  if (since !== rows.length) {
    console.error(`  createdAt >= 1970 matched ${since} of ${rows.length} rows`);
    failed = true;
  }
  // Each row found again by its own updatedAt (an equality filter on a DateTime column).
  for (const row of rows) {
    const again = await prisma.user.count({ where: { id: row.id, updatedAt: row.updatedAt } });
    if (again !== 1) {
      console.error(`  row ${row.id}: updatedAt = ${row.updatedAt.toISOString()} matched ${again} rows`);
      failed = true;
    }
  }
} catch (error) {
  console.error(error);
  failed = true;
} finally {
  await prisma.$disconnect();
}
process.exit(failed ? 1 : 0);
