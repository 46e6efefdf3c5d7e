"""The console's pages, a module (and an ``APIRouter``) each."""
