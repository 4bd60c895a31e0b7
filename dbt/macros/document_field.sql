{#- A field of a semi-structured document column (a VARIANT in both warehouses), cast to `type`.
    DuckDB stores a VARIANT's fields as columns, so this reads a column rather than parsing text. -#}
{% macro document_field(column, key, type='varchar') -%}
    {{ return(adapter.dispatch('document_field', 'postmodern')(column, key, type)) }}
{%- endmacro %}

{% macro default__document_field(column, key, type) -%}
    cast({{ column }}['{{ key }}'] as {{ type }})
{%- endmacro %}

{% macro snowflake__document_field(column, key, type) -%}
    {{ column }}:{{ key }}::{{ type }}
{%- endmacro %}
