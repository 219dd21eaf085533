"""The walkthroughs as data: directives and notes parsed from walkthroughs/*.md (read by the site builder and the explorer)."""
