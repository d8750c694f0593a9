-- The application's User table and Role enum exactly as Prisma 6.19 generates them for
-- the application's schema (see ../shared/prisma/ddl-postgresql.sql); run only when
-- the table is absent.
CREATE TABLE "User" (
    "id" TEXT NOT NULL,
    "name" VARCHAR(255),
    "mail_address" VARCHAR(255) NOT NULL,
    "role" "Role" NOT NULL DEFAULT 'USER',
    "createdAt" TIMESTAMP(0) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(0) NOT NULL,

    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);

CREATE UNIQUE INDEX "User_id_key" ON "User"("id");

CREATE UNIQUE INDEX "User_mail_address_key" ON "User"("mail_address");
