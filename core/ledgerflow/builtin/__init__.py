"""Actions that ship with ledgerflow, registered like any plugin's."""
