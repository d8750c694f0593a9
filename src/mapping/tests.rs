use super::*;

const SEED: &str = include_str!("../../fixtures/prisma/schema.prisma");
const CUID: &str = include_str!("../../fixtures/prisma/cuid-clerkid.prisma");
const AUTOINCREMENT: &str = include_str!("../../fixtures/prisma/autoincrement-mapped.prisma");
const UUID: &str = include_str!("../../fixtures/prisma/uuid-soft-delete.prisma");

#[test]
fn print_reports() -> Result<(), MappingError> {
    for s in [SEED, CUID, AUTOINCREMENT, UUID] {
        println!("{}", Mapping::from_text(s, None)?.report());
    }
    Ok(())
}
