"""Finished runs and output folders: the typed manifest and its one reader, and the rules every command that
writes a folder follows so that nothing the user owns is lost."""
