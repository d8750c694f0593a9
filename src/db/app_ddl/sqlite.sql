-- The application's User table exactly as Prisma 6.19 generates it for SQLite (see
-- ../shared/prisma/ddl-sqlite.sql); run only when the table is absent.
CREATE TABLE "User" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "name" TEXT,
    "mail_address" TEXT NOT NULL,
    "role" TEXT NOT NULL DEFAULT 'USER',
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" DATETIME NOT NULL
);

CREATE UNIQUE INDEX "User_id_key" ON "User"("id");

CREATE UNIQUE INDEX "User_mail_address_key" ON "User"("mail_address");
