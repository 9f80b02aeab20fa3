/*-------------------------------------------------------------------------
 *
 * values.c
 *	  crm.is_blank(text): the one definition of a blank name.
 *
 * Every CHECK of the extension that refuses an empty name calls it (see
 * src/sql/97_value_checks.sql), so that a name made only of whitespace of
 * any kind is refused the same way on every table: ASCII blanks, the
 * Unicode White_Space characters (no-break, en, em, ideographic spaces,
 * line and paragraph separators) and the format characters that render as
 * nothing (zero-width space and joiners, word joiner, byte order mark).
 * It is C rather than a regular expression so that the test costs a scan
 * of the string whatever the server encoding and collation.
 *
 *-------------------------------------------------------------------------
 */
#include "crm.h"

#include "mb/pg_wchar.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(crm_values_is_blank);

/* Whether a Unicode code point is whitespace or renders as nothing. */
static bool
is_blank_code_point(pg_wchar c)
{
	if ((c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0)
		return true;
	if (c < 0x1680)
		return false;
	return c == 0x1680 || c == 0x180E ||
		(c >= 0x2000 && c <= 0x200D) ||
		c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
		c == 0x2060 || c == 0x3000 || c == 0xFEFF;
}

/*
 * crm.is_blank(text) returns boolean: true when the text is empty or holds
 * only blank code points.  The text is read as Unicode: converted to UTF-8
 * first when the database uses another encoding.
 */
Datum
crm_values_is_blank(PG_FUNCTION_ARGS)
{
	text	   *value = PG_GETARG_TEXT_PP(0);
	const char *s = VARDATA_ANY(value);
	int			len = VARSIZE_ANY_EXHDR(value);
	const unsigned char *p;
	const unsigned char *end;

	if (GetDatabaseEncoding() != PG_UTF8)
	{
		s = pg_server_to_any(s, len, PG_UTF8);
		len = strlen(s);
	}
	p = (const unsigned char *) s;
	end = p + len;
	while (p < end)
	{
		int			n = pg_utf_mblen(p);

		if (n > end - p || !is_blank_code_point(utf8_to_unicode(p)))
			PG_RETURN_BOOL(false);
		p += n;
	}
	PG_RETURN_BOOL(true);
}
