"""Create student_course_purchases, or complete a table the old worker left behind."""

from __future__ import annotations

from alembic import op

revision = "001_create_purchases"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE IF NOT EXISTS student_course_purchases (
            id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            student_id   uuid NOT NULL,
            course_id    uuid NOT NULL,
            payment_id   text NOT NULL,
            amount_cents bigint NOT NULL,
            currency     char(3) NOT NULL,
            metadata     jsonb,
            is_active    boolean NOT NULL DEFAULT true,
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now()
        )
    """)
    # Tables made by the old worker may predate some columns.
    for column in (
        "metadata jsonb",
        "created_at timestamptz NOT NULL DEFAULT now()",
        "updated_at timestamptz NOT NULL DEFAULT now()",
    ):
        op.execute(f"ALTER TABLE student_course_purchases ADD COLUMN IF NOT EXISTS {column}")
    # GET /students/{id}/courses and the duplicate look-ups read by student.
    op.execute(
        "CREATE INDEX IF NOT EXISTS student_course_purchases_student_idx ON student_course_purchases (student_id)"
    )
